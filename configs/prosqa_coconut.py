"""The embedded default: Coconut against CoT and no-CoT on graph search, on a CPU.

    python -m latent_jax.main --workdir runs/prosqa              (this file is configs/default.py)
    python -m latent_jax.main --config=configs/prosqa_coconut.py:smoke --workdir runs/smoke

Writes ProsQA-style problems as graph tokens (latent_jax.data.prosqa_graph: one token per
node, edges as pairs, the two candidates, the root) into workdir/data, trains a shared base
from scratch on graph walks over the training questions (every supervised token an in-context
lookup, nothing names an answer), then fine-tunes three models from it on the same data and
the same number of updates (no-CoT, CoT, Coconut), evaluates each on the held-out test split,
probes what each continuous thought encodes, and prints the table with 95% intervals and a
verdict. The graph format and the 2-layer model follow "Reasoning by Superposition" (Zhu, Hao
et al. 2025, arXiv 2505.12514), which trains from scratch for ~17k updates; its Coconut is
near-perfect where 2-layer CoT stays near 75%. The base and the set-valued thought labels are
what a CPU budget of 1,200 updates per method needs (docs/coconut.md has the runs). The Coconut paper's ProsQA numbers with a
pretrained GPT-2 are Coconut 97.0, CoT 77.5, no-CoT 76.7 (Hao et al. 2024, arXiv 2412.06769).

Presets: "smoke" (the same chain at toy size), "coconut_only" (the base, then one Coconut run), "paper"
(the superposition paper's settings: 2 layers of 768, ProsQA-sized graphs, batch 256, lr 1e-4,
25 epochs per stage, 300 epochs, frontier supervision; for accelerators), "text" (the earlier
default: ProsQA as text, Coconut from the CoT model), "paper_text" (the Coconut paper's GPT-2
hyperparameters of args/prosqa_coconut.yaml on text ProsQA).
"""

import os
import sys

from ml_collections import ConfigDict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from any directory

from configs.base import coconut_settings, get_base  # noqa: E402


def generation(max_new_tokens: int, do_sample: bool = False, temperature: float = 0.0, top_p: float = 1.0) -> ConfigDict:
    """Per-mode decoding settings (greedy by default, as the original Coconut evaluates;
    the MultiCoCo configs sample: CoT t=1.0 p=0.9, Coconut t=0.8 p=0.9, vanilla t=0.6 p=0.8)."""
    return ConfigDict(dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p))


def coconut_fields(c: ConfigDict) -> ConfigDict:
    """Fields every Coconut-workflow config has (shared by the prosqa / prontoqa / gsm files)."""
    c.workflow = "coconut"
    c.coconut_mode = "coconut"  # no_cot | cot | coconut
    c.coconut = coconut_settings()  # the curriculum: c_thought, epochs_per_stage, max_latent_stage, ...
    c.chain = ""  # e.g. "no_cot,cot,coconut": separate runs in workdir/<mode>/, one table
    c.chain_overrides = ConfigDict()
    c.coconut_from_cot = True  # chained Coconut starts from the CoT run's best model (as the paper)
    c.optim.reset_on_stage_change = True  # fresh optimizer state when the curriculum stage changes
    c.load_model_path = ""  # start from this model (e.g. the CoT run's best_model)
    c.latent_init = "copy"  # new token rows: copy "<<" when it is one token (as the original), else mean
    c.remat_thoughts = True
    c.thought_norm = "none"  # none (as the original) | embed: rescale thoughts to the mean embedding norm
    c.decode_thoughts = 0  # k > 0: predictions.jsonl lists each thought's top-k tokens through the LM head
    c.eval_stage = -1  # stage of the test prompts (-1: the final scheduled stage)
    c.eval_batch_size = 64
    c.optim.schedule = "constant"
    c.optim.end_lr_ratio = 0.0
    c.optim.mu_dtype = ""
    c.optim.grad_clip = 0.0
    c.model.tie_word_embeddings = False

    c.data = ConfigDict()
    c.data.generate = ""  # "prosqa" (sentences) | "prosqa_graph" (graph tokens): write files into workdir/data
    c.data.generate_dir = ""
    c.data.format = "text"  # text (question / steps / "### answer") | graph (graph tokens, "[A] answer")
    # generator settings; concepts / branching / phrasing are the sentence generator's, min_nodes /
    # max_nodes / edges_per_node / node_tokens the graph generator's (defaults: ProsQA's statistics)
    c.data.gen = ConfigDict(dict(train=4000, valid=300, test=300, seed=0, concepts=24, min_hops=3, max_hops=4,
                                 branching=1, decoy=1.0, phrasing="sentences", min_nodes=20, max_nodes=26,
                                 edges_per_node=1.57, node_tokens=32))
    c.data.train_path = ""
    c.data.val_path = ""
    c.data.test_path = ""
    c.data.max_length = 0  # drop longer examples (0 = keep all)
    c.data.bucket = 16
    c.data.tokenizer_dir = ""
    c.data.tokenizer_vocab_size = 512
    c.data.tokenizer_kind = "bpe"  # bpe | word (each word and punctuation run one token)
    c.data.max_train_rows = 0
    c.data.max_eval_rows = 0

    c.generation = ConfigDict()
    c.generation.no_cot = generation(32)
    c.generation.cot = generation(128)
    c.generation.coconut = generation(128)
    return c


def graph_recipe(c: ConfigDict) -> ConfigDict:
    """The superposition recipe (Zhu, Hao et al. 2025, arXiv 2505.12514) on graph-token ProsQA:
    every run from scratch, tied embeddings, frontier supervision, no markers, the answer right
    after the thoughts, stage mixing, constant lr, no optimizer reset."""
    c.data.generate = "prosqa_graph"
    c.data.format = "graph"
    c.data.tokenizer_kind = "whitespace"
    c.model.tie_word_embeddings = True
    c.coconut_from_cot = False
    c.coconut.supervision = "frontier"
    c.coconut.latent_markers = False
    c.coconut.pad_latent_to_max = False  # as many thoughts as hops, as the reference
    c.coconut.c_thought = 1
    c.coconut.uniform_prob = 0.1
    c.optim.reset_on_stage_change = False
    c.optim.schedule = "constant"
    c.optim.weight_decay = 0.01
    return c


def get_config(arg: str = "") -> ConfigDict:
    c = graph_recipe(coconut_fields(get_base()))
    # a shared base first (graph walks: every supervised token an in-context lookup, nothing
    # names an answer), then the three methods, each fine-tuned from it with the same updates
    c.chain = "walks,no_cot,cot,coconut"
    c.seed = 0

    # a 2-layer, 128-wide llama-style model trained from scratch (the paper's is GPT-2 style,
    # 2 layers of 768)
    c.model.model_type = "llama"
    c.model.hidden_size = 128
    c.model.intermediate_size = 256
    c.model.num_hidden_layers = 2
    c.model.num_attention_heads = 8
    c.model.num_key_value_heads = 8
    c.model.head_dim = 16
    c.model.max_position_embeddings = 256
    c.model.tie_word_embeddings = False  # tied, the lookup formed later and Coconut came last (docs/coconut.md)

    # ProsQA-style graphs scaled to a CPU: 7-8 nodes, 1.4 edges per node, 2 hops (a 2-layer
    # model cannot chain two lookups in one pass), a decoy branch from the root beside the
    # path, node ids drawn from 10 tokens (docs/coconut.md: with 3 hops and 10-11 nodes the
    # lookup had not formed after 250-400 updates on this budget)
    g = c.data.gen
    g.train, g.valid, g.test = 9600, 500, 1000  # validation large enough to pick an epoch
    g.min_nodes, g.max_nodes, g.edges_per_node, g.node_tokens = 7, 8, 1.4, 10
    g.min_hops, g.max_hops, g.decoy = 2, 2, 1.0
    c.data.bucket = 8

    # the shared base: 2 epochs of graph walks (32 walk tokens after each question, every walk
    # node labelled with the set of its children), which forms the in-context lookup in ~150
    # updates where the methods' own labels take >1,800 (docs/coconut.md)
    c.coconut.walk_tokens = 32
    c.chain_overrides.walks = ConfigDict(dict(num_epochs=2))

    # then each method 8 epochs (1,200 updates) from the base; Coconut with both hops as
    # thoughts from its first update (the paper's "w/o curriculum": from a base that has the
    # lookup, the curriculum's CoT and one-thought stages only ask the root's state for one path
    # node, which the last stage then replaces by its BFS layer; the readout of the answer
    # formed 3+ epochs later with them, docs/coconut.md), each fed-back thought labelled by the
    # set of nodes at its depth (the BFS layer it should hold in superposition);
    # supervision="frontier" with thought_labels="none" is the paper's exact recipe
    c.coconut.supervision = "steps"
    c.coconut.thought_labels = "reach"
    c.coconut.max_latent_stage = 2
    c.coconut.epochs_per_stage = 1
    c.chain_overrides.coconut = ConfigDict(dict(coconut=ConfigDict(dict(ablation="no_curriculum", uniform_prob=0.0))))
    c.num_epochs = 8
    c.batch_size = 64
    c.eval_batch_size = 100
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 20
    c.optim.grad_clip = 1.0
    # each method's run decays its lr to 0 (cosine): at a constant lr seed 1's Coconut was still
    # moving between epochs (validation 87-92%, test 92.6%); the base keeps a constant lr
    c.optim.schedule = "cosine"
    c.chain_overrides.walks.optim = ConfigDict(dict(schedule="constant"))
    c.log_every = 25
    c.keep_best = 1
    c.decode_thoughts = 16  # the probe ranks every node token of each thought
    c.generation.no_cot = generation(3)
    c.generation.cot = generation(8)
    c.generation.coconut = generation(8)  # stages 0-1 still write the rest of the path

    if arg == "smoke":
        c.model.hidden_size = 32
        c.model.intermediate_size = 64
        c.model.num_attention_heads = 2
        c.model.num_key_value_heads = 1
        c.data.gen.train, c.data.gen.valid, c.data.gen.test = 32, 8, 8
        c.batch_size = 16
        c.eval_batch_size = 8
        c.coconut.epochs_per_stage = 1
        c.num_epochs = 2
        c.coconut.max_latent_stage = 1
        c.optim.warmup_steps = 0
        c.log_every = 1
        c.progress = False
        c.coconut.walk_tokens = 8
        c.chain_overrides.walks.num_epochs = 1
    elif arg == "coconut_only":
        c.chain = "walks,coconut"  # the shared base, then one Coconut run
    elif arg == "paper":
        # the superposition paper's settings (args/prosqa_coconut_2l_8h_768d.yaml of
        # Ber666/reasoning-by-superposition) on ProsQA-sized graphs, for accelerators
        c.model.hidden_size, c.model.intermediate_size, c.model.head_dim = 768, 3072, 96
        c.model.max_position_embeddings = 512
        g.train, g.valid, g.test = 14785, 257, 419
        g.min_nodes, g.max_nodes, g.edges_per_node, g.node_tokens = 20, 26, 1.57, 32
        g.min_hops, g.max_hops = 3, 4
        c.coconut.max_latent_stage, c.coconut.epochs_per_stage, c.num_epochs = 4, 25, 300
        c.batch_size, c.optim.learning_rate, c.optim.warmup_steps, c.optim.grad_clip = 256, 1e-4, 0, 0.0
        c.optim.schedule = "constant"
        c.decode_thoughts = 40
        c.model.dtype = "bfloat16"
        c.coconut.supervision, c.coconut.thought_labels = "frontier", "none"  # the paper's exact recipe
        c.chain, c.model.tie_word_embeddings = "no_cot,cot,coconut", True  # from scratch, tied (GPT-2)
        c.chain_overrides = ConfigDict()  # with its curriculum
        c.generation.coconut = generation(2)
    elif arg in ("text", "paper_text"):
        c = text_config(c, arg)
    elif arg:
        raise ValueError(f"unknown preset {arg!r} for prosqa_coconut.py; use smoke, coconut_only, paper, text or paper_text")
    return c


def text_config(c: ConfigDict, arg: str) -> ConfigDict:
    """The earlier default: ProsQA written as sentences / pairs, Coconut started from the CoT
    model with the original step-replacing curriculum (docs/coconut.md, "Text ProsQA")."""
    base = coconut_fields(get_base())
    for k in ("data", "generation"):
        c[k] = base[k]
    for k in ("supervision", "latent_markers", "thought_labels", "pad_latent_to_max", "uniform_prob"):
        c.coconut[k] = base.coconut[k]
    for k in ("coconut_from_cot", "decode_thoughts"):
        c[k] = base[k]
    c.chain = "no_cot,cot,coconut"
    c.model.tie_word_embeddings = False
    c.model.intermediate_size = 256
    c.model.max_position_embeddings = 512
    c.optim.reset_on_stage_change = True
    c.optim.schedule = "constant"
    c.data.generate = "prosqa"
    # 1-3 hops (2-4 steps, one in-context lookup each: the person's membership, then the
    # fact out of the current concept), 16 concepts (one token each with the word
    # tokenizer), no dead-end branches, no decoy membership of the person; the negative
    # candidate still ends a similar chain, and edges from it lead into the path. Facts are
    # written as pairs ("X Y."): with ProsQA's "Every X is a Y." a 2-layer model trained from
    # scratch does not form the lookup in a CPU budget (docs/coconut.md has the measurements)
    c.data.gen.train, c.data.gen.valid, c.data.gen.test = 12000, 100, 200
    c.data.gen.concepts = 16
    c.data.gen.min_hops, c.data.gen.max_hops, c.data.gen.branching, c.data.gen.decoy = 1, 3, 0, 0.0
    c.data.gen.phrasing = "pairs"
    c.data.tokenizer_kind = "word"  # one id per invented word / name

    c.coconut.c_thought = 1
    c.coconut.epochs_per_stage = 1
    c.coconut.max_latent_stage = 4  # max_hops + 1 steps: every step replaced at the last stage
    c.coconut.pad_latent_to_max = True
    c.batch_size = 64  # batch 16 stalls on the lookup; 64 forms it in a few hundred updates
    c.eval_batch_size = 100
    c.optim.learning_rate = 3e-3
    c.optim.schedule = "cosine"
    c.optim.end_lr_ratio = 0.3
    c.optim.weight_decay = 0.01
    c.optim.warmup_steps = 50
    c.optim.grad_clip = 1.0
    c.log_every = 25
    c.keep_best = 2
    c.generation.no_cot = generation(12)
    c.generation.cot = generation(40)
    c.generation.coconut = generation(40)  # intermediate stages still write the remaining steps

    # epochs per chained run (187 updates each): no-CoT 1, CoT 4 (the lookup forms after 400-550
    # updates); the Coconut run starts from
    # the CoT model at stage 1 (its stage 0 is CoT training, already done), one epoch per
    # stage 1-4 on the first 8,000 training rows (125 updates per stage)
    c.num_epochs = 5
    c.chain_overrides = ConfigDict()
    c.chain_overrides.no_cot = ConfigDict(dict(num_epochs=1))
    c.chain_overrides.cot = ConfigDict(dict(num_epochs=4))
    c.chain_overrides.coconut = ConfigDict(dict(num_epochs=5, start_epoch=1, data=ConfigDict(dict(max_train_rows=8000))))

    if arg == "paper_text":
        c.chain = ""
        c.coconut.c_thought, c.coconut.epochs_per_stage, c.coconut.max_latent_stage = 1, 5, 6
        c.num_epochs, c.batch_size = 50, 32
        c.optim.learning_rate, c.optim.weight_decay = 1e-4, 0.01
        c.optim.warmup_steps, c.optim.grad_clip = 0, 0.0
        c.data.gen.min_hops, c.data.gen.max_hops, c.data.gen.concepts = 3, 6, 40
        c.data.gen.train, c.data.gen.valid, c.data.gen.test = 17886, 300, 500
        c.data.gen.branching, c.data.gen.decoy, c.data.tokenizer_kind = 1, 1.0, "bpe"
        c.data.gen.phrasing = "sentences"
        c.optim.schedule = "constant"
        c.generation.no_cot, c.generation.cot, c.generation.coconut = generation(24), generation(96), generation(24)
    return c
