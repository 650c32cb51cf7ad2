"""The Coconut task: `run(config, workdir)` for the `coconut` workflow, on the one Trainer.

CoconutTask (loss: latent.coconut.coconut_loss; batches: the curriculum's CoconutTrainData
re-padded to one geometry per stage; evaluator: batched KV-cached generation scored by a
Scorer; best metric: validation accuracy at the final stage; export: best_model/) serves
the text workflow here and, with an EmbeddingSource for image / video features, the
multimodal one (tasks/coconut_mm.py).

One run trains one mode (config.coconut_mode: no_cot | cot | coconut) through its
curriculum stages, evaluating validation accuracy every epoch, then scores the test split:

    workdir/
      data/                      generated ProsQA-style files (config.data.generate)
      tokenizer/                 the tokenizer trained on the data (from-scratch models)
      checkpoints/               TrainCheckpointer: best N by val accuracy + the latest
      best_model/                save_model checkpoint of the best epoch of the final stage
      metrics.jsonl, tb/         train / val metrics (train/metrics.MetricsWriter)
      val_accuracy.png           validation accuracy by epoch with stage boundaries
      test/predictions.jsonl     per example: question, generated text and ids, extracted
                                 answer, gold, correct, truncated (hit max_new_tokens);
                                 with decode_thoughts=k, each thought's top-k tokens
      test/results.json          accuracy, mean generated tokens, number truncated

`config.chain` (e.g. "no_cot,cot,coconut") runs the modes one after the other as separate
runs in workdir/<mode>/ (the coconut run starting from the CoT run's best model, as the
paper does) and prints one accuracy table. `config.mode == "eval"` only scores a model
(config.load_model_path, or the chained runs' best models) on the test split.

Resume is exact (train/trainer.Trainer): the latest checkpoint holds params, optimizer
state, step, epoch and the data iterator position, and a restarted run continues from it.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import time
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from latent_jax.data.coconut_json import load_coconut_json
from latent_jax.data.pipeline import CoconutEvalData, CoconutTrainData, load_split
from latent_jax.data.prosqa import write_prosqa
from latent_jax.data.prosqa_graph import write_graph_splits
from latent_jax.data.tokenizer import (
    add_coconut_tokens,
    coconut_init_token_id,
    load_tokenizer,
    resize_embeddings,
    text_corpus,
    train_tokenizer,
)
from latent_jax.decoding.diffusion import answer_options_from_config
from latent_jax.decoding.sampling import SamplingParams
from latent_jax.decoding.tova import tova_options_from_config
from latent_jax.latent.coconut import (
    check_thought_norm,
    coconut_diffusion_generate,
    coconut_diffusion_loss,
    coconut_generate,
    coconut_loss,
    diffusion_as_generate_output,
    thought_topk,
)
from latent_jax.latent.curriculum import (
    CurriculumConfig,
    eval_prompt,
    extract_answer,
    problem_format,
    scheduled_stage,
    stage_boundaries,
    stage_changed,
    train_sample,
)
from latent_jax.latent.probe import frontier_probe
from latent_jax.models.config import ModelConfig
from latent_jax.models.decoder import init_params
from latent_jax.models.io import save_model
from latent_jax.paths import write_text
from latent_jax.tasks.common import load_model, model_config_from
from latent_jax.train.metrics import plot_series, read_metrics
from latent_jax.train.trainer import Batch, Task, Trainer, check_mode, quiet_logs, write_json

log = logging.getLogger(__name__)

MODES = ("no_cot", "cot", "coconut")
MODE_TITLES = {"no_cot": "no-CoT", "cot": "CoT", "coconut": "Coconut"}
BATCH_KEYS = ("input_ids", "attention_mask", "labels", "latent_mask", "position_ids")


# ============================================================================ entry point
def run(config: ConfigDict, workdir: str, run_one: Callable | None = None, result_key: str = "test") -> dict:
    """Train and/or evaluate as `config` says (one run by `run_one`, default run_single, or the
    chain of config.chain); returns a dict of results."""
    check_mode(config)
    quiet_logs(config)
    chain = [m.strip() for m in str(config.get("chain", "") or "").split(",") if m.strip()]
    if chain:
        return run_chain(config, workdir, chain, run_one, result_key)
    return (run_one or run_single)(config, workdir)


def sub_config(config: ConfigDict, mode: str, workdir: str, cot_dir: str | None) -> ConfigDict:
    """The config of the chained run of `mode` in workdir/<mode>/: its chain_overrides applied,
    Coconut starting from cot_dir/best_model, generated data and tokenizer shared."""
    sub = copy.deepcopy(config)
    with sub.unlocked():
        sub.chain = ""
        sub.coconut_mode = mode
        over = config.get("chain_overrides", ConfigDict()).get(mode)
        if over is not None:
            deep_update(sub, over)
        if config.mode == "eval":
            sub.load_model_path = os.path.join(workdir, mode, "best_model")
        elif mode == "coconut" and cot_dir and not sub.load_model_path:
            sub.load_model_path = os.path.join(cot_dir, "best_model")
        if config.data.get("generate"):  # share one generated data set across the chained runs
            sub.data.generate_dir = config.data.get("generate_dir", "") or os.path.join(workdir, "data")
        if "tokenizer_dir" in sub.data:  # and one trained tokenizer
            sub.data.tokenizer_dir = sub.data.tokenizer_dir or os.path.join(workdir, "tokenizer")
    return sub


def deep_update(dst: ConfigDict, src: Any) -> None:
    """Set `src`'s keys (nested dicts merged key by key) into the ConfigDict `dst`."""
    for k, v in (src.items() if hasattr(src, "items") else []):
        if hasattr(v, "items") and k in dst and hasattr(dst[k], "items"):
            deep_update(dst[k], v)
        else:
            dst[k] = v


def run_chain(config: ConfigDict, workdir: str, modes: list[str], run_one: Callable | None = None,
              result_key: str = "test") -> dict:
    """Runs each mode as its own run (`run_one`, default run_single) in workdir/<mode>/ (coconut
    from the CoT best model), then prints the accuracy table of each run's `result_key`."""
    run_one = run_one or run_single
    for m in modes:
        if m not in MODES:
            raise ValueError(f"config.chain has {m!r}; use a comma list of {', '.join(MODES)}")
    t0 = time.time()
    results: dict[str, dict] = {}
    # the paper starts Coconut from the CoT model; the from-scratch recipe (frontier supervision,
    # whose stage 0 is its own first-hop training) sets coconut_from_cot=False
    from_cot = "cot" in modes and bool(config.get("coconut_from_cot", True))
    cot_dir = os.path.join(workdir, "cot") if from_cot else None
    for m in modes:
        sub = sub_config(config, m, workdir, cot_dir)
        print(f"== {MODE_TITLES[m]} run -> {os.path.join(workdir, m)}", flush=True)
        results[m] = run_one(sub, os.path.join(workdir, m))
    plot = _plot_chain(workdir, modes, config)
    test = {m: results[m] if result_key == "" else results[m].get(result_key, {}) for m in modes}
    table = format_table(test)
    probe = test.get("coconut", {}).get("probe")
    if probe:
        table += "\n\n" + format_probe(probe)
    print(table, flush=True)
    summary = {
        "modes": modes,
        "test": test,
        "wall_time_s": time.time() - t0,
        "plot": plot,
        "probe": probe,
    }
    write_json(os.path.join(workdir, "results.json"), summary)
    write_text(os.path.join(workdir, "results_table.txt"), table + "\n")
    return summary


def format_table(test: dict[str, dict]) -> str:
    """The final accuracy table (one row per mode)."""
    lines = [f"{'method':<10} {'accuracy':>9} {'# tokens':>9} {'examples':>9}", "-" * 40]
    for m, r in test.items():
        if not r:
            continue
        lines.append(f"{MODE_TITLES.get(m, m):<10} {100 * r['accuracy']:>8.1f}% {r['mean_new_tokens']:>9.1f} {r['num_examples']:>9d}")
    return "\n".join(lines)


def format_probe(probe: dict) -> str:
    """The thought probe as a table (one row per continuous thought)."""
    lines = ["thought probe (test): per thought, its top-ranked nodes through the LM head vs the BFS frontier",
             f"{'thought':>7} {'in frontier':>12} {'chance':>7} {'top-1 reach':>12} {'top-1 path':>11} {'n':>5}"]
    for t in probe["by_thought"]:
        lines.append(f"{t['thought']:>7} {100 * t['frontier_share']:>11.1f}% {100 * t['chance_share']:>6.1f}% "
                     f"{100 * t['top1_in_reach']:>11.1f}% {100 * t['top1_on_path']:>10.1f}% {t['n']:>5}")
    return "\n".join(lines)


def plot_probe(path: str, probe: dict) -> str:
    """thought_probe.png: per continuous thought (= depth), grouped bars of the share of its
    top-|frontier| nodes in the BFS frontier, its top-1 node on a shortest path, and chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = probe["by_thought"]
    xs = np.arange(len(by))
    bars = (("top-|frontier| nodes in the BFS frontier", "frontier_share"),
            ("top-1 node on a shortest path", "top1_on_path"), ("chance (frontier / nodes)", "chance_share"))
    fig, ax = plt.subplots(figsize=(7, 4))
    w = 0.8 / len(bars)
    for i, (label, key) in enumerate(bars):
        ax.bar(xs + (i - 1) * w, [t[key] for t in by], w, label=label)
    ax.set_xticks(xs, [str(t["thought"]) for t in by])
    ax.set_xlabel("continuous thought (= depth in the graph)")
    ax.set_ylabel("share of test problems")
    ax.set_ylim(0, 1)
    ax.set_title("what each continuous thought encodes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_chain(workdir: str, modes: list[str], config: ConfigDict) -> str | None:
    series, vlines = {}, []
    for m in modes:
        rows = [r for r in read_metrics(os.path.join(workdir, m)) if "val/accuracy" in r]
        if rows:
            series[MODE_TITLES[m]] = ([r["val/epoch"] + 1 for r in rows], [r["val/accuracy"] for r in rows])
    if not series:
        return None
    if "coconut" in modes:
        vlines = [b + 0.5 for b in _boundaries(os.path.join(workdir, "coconut"))]
    return plot_series(
        os.path.join(workdir, "val_accuracy.png"), series, "epoch", "validation accuracy",
        title="validation accuracy by epoch", vlines=vlines, vline_label="Coconut stage boundary",
    )


def _boundaries(run_dir: str) -> list[int]:
    p = os.path.join(run_dir, "stages.json")
    if os.path.exists(p):
        with open(p) as f:
            return json.load(f)["boundaries"]
    return []


# ============================================================================ setup
def curriculum_config(config: ConfigDict) -> CurriculumConfig:
    """The CurriculumConfig of config.coconut_mode and config.coconut (every Coconut workflow's
    curriculum settings; defaults in configs/base.py coconut_settings)."""
    c = config.coconut
    return CurriculumConfig(
        mode=config.coconut_mode, ablation=str(c.ablation), c_thought=int(c.c_thought),
        epochs_per_stage=int(c.epochs_per_stage), max_latent_stage=int(c.max_latent_stage),
        pad_latent_to_max=bool(c.pad_latent_to_max), uniform_prob=float(c.uniform_prob), seed=int(config.seed),
        supervision=str(c.supervision), latent_markers=bool(c.latent_markers), thought_labels=str(c.thought_labels),
    )


def prepare_data(config: ConfigDict, workdir: str) -> dict[str, str]:
    """Paths of the train / valid / test files; generates ProsQA-style data when
    config.data.generate == 'prosqa' (once; existing files are reused)."""
    d = config.data
    if d.get("generate", ""):
        if d.generate not in ("prosqa", "prosqa_graph"):
            raise ValueError(f"config.data.generate={d.generate!r}; use 'prosqa', 'prosqa_graph' or '' (read data.*_path)")
        out = d.get("generate_dir", "") or os.path.join(workdir, "data")
        g = d.gen
        paths = {s: os.path.join(out, f"{d.generate}_{s}.json") for s in ("train", "valid", "test")}
        if all(os.path.exists(p) for p in paths.values()):
            return paths
        if d.generate == "prosqa_graph":
            write_graph_splits(out, {"train": g.train, "valid": g.valid, "test": g.test}, seed=g.seed,
                               min_nodes=g.min_nodes, max_nodes=g.max_nodes, edges_per_node=g.edges_per_node,
                               min_hops=g.min_hops, max_hops=g.max_hops, node_tokens=g.node_tokens,
                               decoy=float(g.decoy))
        else:
            write_prosqa(out, train=g.train, valid=g.valid, test=g.test, seed=g.seed, concepts=g.concepts,
                         min_hops=g.min_hops, max_hops=g.max_hops, branching=g.branching,
                         decoy=float(g.get("decoy", 1.0)), phrasing=str(g.get("phrasing", "sentences")))
        return paths
    paths = {"train": d.train_path, "valid": d.val_path, "test": d.get("test_path", "") or d.val_path}
    for k, p in paths.items():
        if not p:
            raise ValueError(f"config.data.{'val' if k == 'valid' else k}_path is empty; set it or data.generate='prosqa'")
        if not os.path.exists(p):
            raise FileNotFoundError(f"data file {p} does not exist; fix config.data paths or set data.generate='prosqa'")
    return paths


def build_tokenizer(config: ConfigDict, workdir: str, train_path: str):
    """(tokenizer, tokenizer dir). From load_model_path / model.path when they hold tokenizer
    files, else trained on the training texts (saved, and reused on resume)."""
    for src in (config.get("load_model_path", ""), config.model.path):
        if src and os.path.isdir(src) and any(
            os.path.exists(os.path.join(src, f)) for f in ("tokenizer.json", "tokenizer_config.json")
        ):
            tok = load_tokenizer(src)
            add_coconut_tokens(tok)
            return tok, src
    if config.model.path:
        raise ValueError(f"model.path={config.model.path} has no tokenizer files; copy tokenizer.json into it")
    tdir = config.data.get("tokenizer_dir", "") or os.path.join(workdir, "tokenizer")
    if os.path.exists(os.path.join(tdir, "tokenizer.json")):
        tok = load_tokenizer(tdir)
        add_coconut_tokens(tok)
        return tok, tdir
    rows = load_coconut_json(train_path, on_bad_row=str(config.get("on_bad_row", "error")))
    fmt = problem_format(str(config.data.get("format", "text")))
    tok = train_tokenizer(text_corpus(rows, fmt), tdir, vocab_size=int(config.data.tokenizer_vocab_size),
                          kind=str(config.data.get("tokenizer_kind", "bpe")))
    return tok, tdir


def build_model(config: ConfigDict, tok) -> tuple[ModelConfig, dict]:
    """(ModelConfig, params): from load_model_path or model.path (HF dir or latent_jax
    checkpoint), or from scratch; the vocabulary grown to hold the Coconut tokens."""
    m = config.model
    src = config.get("load_model_path", "") or m.path
    if src:
        mcfg, params = load_model(config, src)
    else:
        mcfg = model_config_from(m, tok.vocab_size, tie_word_embeddings=bool(m.get("tie_word_embeddings", False)),
                                 bos_token_id=tok.bos_id, eos_token_id=(tok.eos_id,), pad_token_id=tok.pad_id)
        params = init_params(mcfg, jax.random.PRNGKey(int(config.seed)))
    if tok.vocab_size > mcfg.vocab_size:
        init_id = coconut_init_token_id(tok) if config.get("latent_init", "copy") == "copy" else None
        params, mcfg = resize_embeddings(params, mcfg, tok.vocab_size, init_from_token_id=init_id)
    return mcfg, params


def _gen_settings(config: ConfigDict, mode: str) -> dict:
    g = config.generation.get(mode)
    if g is None:
        raise ValueError(f"config.generation has no settings for mode {mode!r}; add generation.{mode}")
    return dict(max_new_tokens=int(g.max_new_tokens), do_sample=bool(g.do_sample),
                temperature=float(g.temperature), top_p=float(g.top_p))


# ============================================================================ shapes
def _round_up(x: int, m: int) -> int:
    return -(-int(x) // m) * m


class Geometry(NamedTuple):
    """One batch shape for a whole stage: latent column, length, and thought columns."""

    start: int
    T: int
    num_latent: int = 0


def geometry(seqs, bucket: int = 8) -> Geometry:
    """The Geometry that fits every (anchor, length[, n_latent]) tuple: one compiled program
    per curriculum stage instead of one per batch (with uniform_prob mixing the batches of a
    stage hold different latent counts; thought columns past a row's latents hold its
    ordinary tokens, so scanning the stage's maximum is exact)."""
    start = _round_up(max(max(s[0] for s in seqs), 1), bucket)
    suffix = _round_up(max(max(s[1] - s[0] for s in seqs), 1), bucket)
    return Geometry(start, start + suffix, max((s[2] if len(s) > 2 else 0) for s in seqs))


def _num_latent(batch, geom) -> int:
    return max(batch.num_latent, geom.num_latent) if isinstance(geom, Geometry) else batch.num_latent


def repad(arrays: dict, latent_start: int, start: int, T: int, pad_id: int) -> dict:
    """Re-pad an aligned batch so its latent column is `start` and its length `T`."""
    shift = start - latent_start
    old_T = arrays["input_ids"].shape[1]
    if shift < 0 or shift + old_T > T:
        raise ValueError(f"batch (latent_start {latent_start}, T {old_T}) does not fit geometry ({start}, {T})")
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": -100, "latent_mask": False, "position_ids": 0}
    out = {}
    for k, a in arrays.items():
        b = np.full((a.shape[0], T), fill.get(k, 0), a.dtype)
        b[:, shift : shift + old_T] = a
        out[k] = b
    if "attention_mask" in out:
        out["position_ids"] = np.maximum(np.cumsum(out["attention_mask"], axis=1) - 1, 0).astype(np.int32)
    return out


def train_geometry(examples, epoch: int, cc: CurriculumConfig, ids, bucket: int) -> Geometry:
    return geometry([(s.anchor, len(s.input_ids), s.n_latent) for s in (train_sample(e, epoch, cc, ids) for e in examples)],
                    bucket)


def eval_geometry(examples, stage: int, cc: CurriculumConfig, ids, bucket: int) -> Geometry:
    return geometry([(p.anchor, len(p.input_ids), p.n_latent) for p in (eval_prompt(e, stage, cc, ids) for e in examples)],
                    bucket)


# ============================================================================ the task
class EmbeddingSource(Protocol):
    """Extra input embeddings of a batch (the multimodal workflows' image / video features):
    arrays keyed embeds_override (B, T, D) and embeds_override_mask (B, T) for the rows'
    `example_idx` of the named split ('train' | 'eval'), placed at their tokens in `input_ids`."""

    def arrays(self, input_ids: np.ndarray, example_idx: np.ndarray, split: str) -> dict: ...


class TrainBatches:
    """A CoconutTrainData epoch iterator as Trainer Batches: every batch re-padded to the
    stage's Geometry (one compile per stage), with the embedding source's arrays."""

    def __init__(self, it, geom: Geometry, pad_id: int, embeds: EmbeddingSource | None,
                 noise: tuple[int, int] | None = None):
        self.it, self.geom, self.pad_id, self.embeds = it, geom, pad_id, embeds
        self.noise = noise  # (seed, epoch): per-row noise seeds for the masked-diffusion objective

    def __len__(self) -> int:
        return len(self.it)

    def get_state(self) -> dict:
        return self.it.get_state()

    def __iter__(self):
        g = self.geom
        for b in self.it:
            arrays = repad(b.arrays, b.latent_start, g.start, g.T, self.pad_id)
            arrays = {k: arrays[k] for k in BATCH_KEYS}
            if self.embeds is not None:
                arrays.update(self.embeds.arrays(arrays["input_ids"], b.example_idx, "train"))
            if self.noise is not None:  # a function of (seed, epoch, example): exact on resume
                seed, epoch = self.noise
                ex = np.asarray(b.example_idx, np.int64)
                arrays["noise_seed"] = ((ex * 1000003 + epoch * 7919 + seed) % (2 ** 31)).astype(np.uint32)
            yield Batch((g.start, _num_latent(b, g), bool(b.feedback)), arrays)


class CoconutTask(Task):
    """Coconut (no_cot | cot | coconut through the curriculum stages) for the Trainer; text or,
    with an EmbeddingSource, multimodal. Scores validation accuracy every epoch; the best epoch
    of the final stage is exported to workdir/best_model."""

    best_metric = "accuracy"

    def __init__(self, config: ConfigDict, workdir: str, mcfg: ModelConfig, tok, cc: CurriculumConfig,
                 train_data, val_data, test_data, export_fn: Callable[[str, Any], None] | None,
                 embeds: EmbeddingSource | None = None, scorer: "Scorer | None" = None,
                 settings: dict | None = None, test_stage: int = -1):
        self.config, self.workdir, self.mcfg, self.tok, self.cc = config, workdir, mcfg, tok, cc
        self.train_data, self.val_data, self.test_data = train_data, val_data, test_data
        self.export_fn, self.embeds = export_fn, embeds
        self.scorer = scorer or TextScorer(problem_format(str(config.data.get("format", "text"))).answer_delimiter)
        self.name = str(config.coconut_mode)
        self.ids = tok.latent_ids
        self.bucket = int(config.data.get("bucket", 16))
        self.remat = bool(config.get("remat_thoughts", True))
        self.thought_norm = check_thought_norm(str(config.get("thought_norm", "none")))
        self.settings = settings or _gen_settings(config, config.coconut_mode)
        self.num_epochs = int(config.num_epochs)
        # evaluation uses the thought count of the last trained stage unless test_stage is set
        self.final_stage = scheduled_stage(max(0, self.num_epochs - 1), cc)
        self.test_stage = self.final_stage if test_stage < 0 else int(test_stage)
        self.test_dir = os.path.join(workdir, "test")
        self.reset_opt = bool(config.optim.reset_on_stage_change)
        self.progress = bool(config.get("progress", True))
        # decoding inside the workflow: the KV-cache policy and the answer decoder (base.py)
        self.tova = tova_options_from_config(config.get("cache"))
        self.answer = answer_options_from_config(config.get("answer"), int(self.settings["max_new_tokens"]),
                                                 int(tok.pad_id))

    # ---------------------------------------------------------------- training
    def compile_key(self):
        return ("coconut", self.mcfg, self.remat, self.thought_norm)

    def loss_fn(self, params, batch, static):
        start, num_latent, feedback = static
        if self.answer is not None:  # the answer span by the masked-diffusion objective
            return coconut_diffusion_loss(params, batch, config=self.mcfg, latent_start=start, num_latent=num_latent,
                                          mask_id=self.answer.mask_id, feedback=feedback, remat_thoughts=self.remat,
                                          thought_norm=self.thought_norm, shift=self.answer.shift_logits)
        return coconut_loss(params, batch, config=self.mcfg, latent_start=start, num_latent=num_latent,
                            feedback=feedback, remat_thoughts=self.remat, thought_norm=self.thought_norm)

    def steps_per_epoch(self) -> int:
        return self.train_data.steps_per_epoch

    def train_batches(self, epoch, data_state):
        geom = train_geometry(self.train_data.examples, epoch, self.cc, self.ids, self.bucket)
        noise = (int(self.config.seed), epoch) if self.answer is not None else None
        return TrainBatches(self.train_data.iterator(epoch, data_state), geom, self.tok.pad_id, self.embeds, noise)

    def log_fields(self, epoch):
        return {"stage": scheduled_stage(epoch, self.cc)}

    def on_epoch_start(self, trainer, state, epoch, resumed):
        if self.reset_opt and stage_changed(epoch, self.cc) and epoch > 0 and not resumed:
            state = trainer.reset_optimizer(state)
        return state

    # ---------------------------------------------------------------- evaluation
    def eval_geometry(self, stage: int) -> Geometry:
        return eval_geometry(self.val_data.examples + self.test_data.examples, stage, self.cc, self.ids, self.bucket)

    def evaluate(self, trainer, params, epoch):
        # frontier supervision: every epoch is scored on the final task (all thoughts, then the
        # answer), since intermediate stages end in a frontier node rather than an answer
        stage = scheduled_stage(epoch, self.cc)
        val_stage = self.final_stage if self.cc.frontier else stage
        res = self.score(params, self.val_data, val_stage, int(self.config.seed) + epoch, desc="valid", split="val")
        return {"accuracy": res["accuracy"], "mean_new_tokens": res["mean_new_tokens"]}, (
            res["accuracy"] if val_stage == self.final_stage else None)

    def export(self, trainer, params):
        self.export_fn(os.path.join(self.workdir, "best_model"), jax.device_get(params))

    def generate(self, params: dict, eb, rng, geom: Geometry | None = None, split: str = "eval"):
        """Batched cached generation for an EvalBatch (re-padded to `geom` when given); `split`
        names the EmbeddingSource's rows (train | val | eval)."""
        s = self.settings
        sp = SamplingParams.make(s["temperature"] if s["do_sample"] else 0.0, s["top_p"])
        a, start = _eval_arrays(eb, geom, self.tok.pad_id)
        extra = {} if self.embeds is None else {
            k: jnp.asarray(v) for k, v in self.embeds.arrays(a["input_ids"], eb.example_idx, split).items()}
        stops = jnp.asarray([self.tok.eos_id], jnp.int32)
        ids, mask, lat = (jnp.asarray(a[k]) for k in ("input_ids", "attention_mask", "latent_mask"))
        if self.answer is not None:  # thoughts autoregressively, then the answer by masked diffusion
            out = coconut_diffusion_generate(params, ids, mask, lat, rng, config=self.mcfg, latent_start=start,
                                             num_latent=_num_latent(eb, geom), opts=self.answer,
                                             feedback=bool(eb.feedback), thought_norm=self.thought_norm, **extra)
            return diffusion_as_generate_output(out, stops, self.tok.pad_id)
        return coconut_generate(
            params, ids, mask, lat, rng, sp, stops, config=self.mcfg, latent_start=start,
            num_latent=_num_latent(eb, geom), max_new_tokens=s["max_new_tokens"], pad_id=self.tok.pad_id,
            feedback=bool(eb.feedback), thought_norm=self.thought_norm, tova=self.tova, **extra)

    def thought_tokens(self, params: dict, eb, k: int, geom: Geometry | None = None):
        """(ids, probs, is_thought) as numpy, (B, num_latent, k) and (B, num_latent): the top-k
        tokens each fed-back thought of an EvalBatch decodes to through the LM head."""
        a, start = _eval_arrays(eb, geom, self.tok.pad_id)
        ids, probs = thought_topk(
            params, jnp.asarray(a["input_ids"]), jnp.asarray(a["attention_mask"]), jnp.asarray(a["latent_mask"]),
            config=self.mcfg, latent_start=start, num_latent=_num_latent(eb, geom), k=k, thought_norm=self.thought_norm)
        is_thought = np.asarray(a["latent_mask"])[:, start : start + _num_latent(eb, geom)].astype(bool)
        return np.asarray(ids), np.asarray(probs), is_thought

    def score(self, params: dict, eval_data, stage: int, seed: int, out_dir: str | None = None,
              desc: str = "eval", split: str = "eval") -> dict:
        """Generation accuracy on `eval_data` at `stage` (one geometry for validation and test).
        With out_dir, writes predictions.jsonl and results.json there."""
        from tqdm import tqdm

        tok = self.tok
        rng = jax.random.PRNGKey(seed)
        geom = self.eval_geometry(stage)
        rows, n_tok = [], []
        max_new = int(self.settings["max_new_tokens"])
        k_th = int(self.config.get("decode_thoughts", 0)) if self.embeds is None else 0
        ds = eval_data.dataset(stage)
        for bi in tqdm(range(len(ds)), desc=desc, leave=False, disable=not self.progress, file=sys.stderr):
            eb = ds[bi]
            rng, sub = jax.random.split(rng)
            out = self.generate(params, eb, sub, geom, split)
            toks, lens = np.asarray(out.tokens), np.asarray(out.lengths)
            passes = 1 + int(out.steps)  # the prompt-and-thoughts prefill, then the answer's passes
            th = self.thought_tokens(params, eb, k_th, geom) if k_th > 0 and eb.num_latent > 0 and eb.feedback else None
            for r in range(toks.shape[0]):
                if eb.example_idx[r] < 0:
                    continue
                ids = toks[r, : lens[r]].tolist()
                body = ids[:-1] if ids and ids[-1] == tok.eos_id else ids
                text = tok.decode(body, skip_special_tokens=True)
                row = self.scorer.score(eb, r, text, split)
                row.update(generated_ids=ids, num_tokens=int(lens[r]), forward_passes=passes,
                           # stopped by max_new_tokens, not by EOS: the answer may be cut off
                           truncated=bool(len(ids) >= max_new and ids[-1] != tok.eos_id))
                if th is not None:  # per thought: its top-k tokens through the LM head, with probabilities
                    t_ids, t_probs, is_t = th
                    row["thoughts"] = [
                        [[tok.decode([int(t)]), round(float(p), 4)] for t, p in zip(t_ids[r, i], t_probs[r, i])]
                        for i in range(t_ids.shape[1]) if is_t[r, i]
                    ]
                rows.append(row)
                n_tok.append(int(lens[r]))
        n_trunc = sum(r["truncated"] for r in rows)
        res = {**self.scorer.results(rows), "mean_new_tokens": float(np.mean(n_tok)) if n_tok else 0.0,
               "mean_forward_passes": float(np.mean([r["forward_passes"] for r in rows])) if rows else 0.0,
               "answer_decoding": "diffusion" if self.answer is not None else "autoregressive",
               "cache_policy": "tova" if self.tova is not None else "full",
               "num_examples": len(rows), "truncated": int(n_trunc), "stage": int(stage),
               **{f"generation_{k}": v for k, v in self.settings.items()}}
        graphs = {e.idx: e.extra for e in eval_data.examples}
        probed = [(r["thoughts"], graphs[r["idx"]]) for r in rows if "thoughts" in r and "reach" in graphs.get(r["idx"], {})]
        if probed:  # graph problems: do the thoughts hold the BFS frontier of their depth?
            res["probe"] = frontier_probe(probed)
        if n_trunc:
            print(f"[{desc}] warning: {n_trunc} of {len(rows)} generations stopped at max_new_tokens={max_new} "
                  "before EOS (answers may be cut off); raise config.generation.<mode>.max_new_tokens", flush=True)
        if out_dir:  # process 0 writes (every process scored every row)
            write_text(os.path.join(out_dir, "predictions.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
            write_json(os.path.join(out_dir, "results.json"), res)
        return res

    def test(self, params: dict, seed: int) -> dict:
        """Score the test split at the test stage into self.test_dir (workdir/test/)."""
        res = self.score(params, self.test_data, self.test_stage, seed, self.test_dir, desc="test")
        if "probe" in res:
            res["probe"]["plot"] = plot_probe(os.path.join(self.workdir, "thought_probe.png"), res["probe"])
            print(format_probe(res["probe"]), flush=True)
        print(f"[{self.name}] test accuracy {100 * res['accuracy']:.1f}% "
              f"({res['num_examples']} examples, {res['mean_new_tokens']:.1f} new tokens)", flush=True)
        return res

    def finish(self, trainer, state, out):
        history = [h for h in out["history"] if "accuracy" in h]
        if history:
            title = MODE_TITLES.get(self.name, self.name)
            out["plot"] = plot_series(
                os.path.join(self.workdir, "val_accuracy.png"),
                {title: ([h["epoch"] + 1 for h in history], [h["accuracy"] for h in history])},
                "epoch", "validation accuracy", title=f"{title}: validation accuracy",
                vlines=[b + 0.5 for b in stage_boundaries(self.num_epochs, self.cc)], vline_label="stage boundary",
            )
        res = self.test(self.load_best(trainer), int(self.config.seed))
        trainer.writer.write(out["step"], {"accuracy": res["accuracy"], "mean_new_tokens": res["mean_new_tokens"]},
                             prefix="test/")
        out["test"] = res
        return out

    def load_best(self, trainer) -> dict:
        """The exported best model (workdir/best_model) on the mesh."""
        return trainer.put(load_model(self.config, os.path.join(self.workdir, "best_model"))[1])


class Scorer(Protocol):
    """Scores one generation (`score` -> a predictions.jsonl row with 'correct' or the
    dataset's fields) and a split (`results` -> dict with 'accuracy')."""

    def score(self, eb, row: int, text: str, split: str) -> dict: ...

    def results(self, rows: list[dict]) -> dict: ...


class TextScorer:
    """Exact match of the answer after the format's delimiter (e.g. '###')."""

    def __init__(self, delimiter: str):
        self.delimiter = delimiter

    def score(self, eb, row: int, text: str, split: str) -> dict:
        pred = extract_answer(text, self.delimiter)
        gold = eb.answers[row].replace(",", "").strip()
        return {"idx": int(eb.example_idx[row]), "question": eb.questions[row], "generated_text": text,
                "prediction": pred, "answer": gold, "correct": pred == gold}

    def results(self, rows: list[dict]) -> dict:
        return {"accuracy": float(np.mean([r["correct"] for r in rows])) if rows else 0.0}


def _eval_arrays(eb, geom: Geometry | None, pad_id: int) -> tuple[dict, int]:
    """An EvalBatch's arrays and latent_start, re-padded to `geom` when given."""
    if geom is None:
        return eb.arrays, eb.latent_start
    return repad(eb.arrays, eb.latent_start, geom.start, geom.T, pad_id), geom.start


# ============================================================================ one run
def run_single(config: ConfigDict, workdir: str) -> dict:
    """Train (or, with mode == 'eval', only evaluate) one Coconut mode in `workdir`."""
    os.makedirs(workdir, exist_ok=True)
    if config.coconut_mode not in MODES:
        raise ValueError(f"config.coconut_mode={config.coconut_mode!r}; use one of {', '.join(MODES)}")
    cc = curriculum_config(config)
    paths = prepare_data(config, workdir)
    tok, tok_dir = build_tokenizer(config, workdir, paths["train"])
    mcfg, params = build_model(config, tok)
    d = config.data
    max_len = int(d.max_length) if d.get("max_length", 0) else None
    bucket = int(d.get("bucket", 16))
    fmt = problem_format(str(d.get("format", "text")))
    bad_rows = str(config.get("on_bad_row", "error"))  # error | skip (count and skip corrupt rows)
    eval_bs = int(config.get("eval_batch_size", config.batch_size))

    def load(path, rows_key):
        return load_split(path, tok, cc, max_length=max_len, max_rows=d.get(rows_key, None) or None, fmt=fmt,
                          on_bad_row=bad_rows)

    def eval_set(path, name):  # every process scores every row (train/trainer.py)
        return CoconutEvalData(load(path, "max_eval_rows"), cc, tok.latent_ids, tok.pad_id, eval_bs, bucket=bucket,
                               name=name, process_index=0, process_count=1)

    test_data = eval_set(paths["test"], "test")
    export = lambda path, p: save_model(path, p, mcfg, tok_dir)  # noqa: E731
    if config.mode == "eval":
        task = CoconutTask(config, workdir, mcfg, tok, cc, None, test_data, test_data, export,
                           test_stage=int(config.eval_stage))
        res = task.test(Trainer(config, task, workdir).put(params), int(config.seed))
        print(format_table({config.coconut_mode: res}), flush=True)
        return {"test": res}

    train_data = CoconutTrainData(load(paths["train"], "max_train_rows"), cc, tok.latent_ids, tok.pad_id,
                                  int(config.batch_size), seed=int(config.seed), shuffle=True, drop_remainder=True,
                                  bucket=bucket)
    task = CoconutTask(config, workdir, mcfg, tok, cc, train_data, eval_set(paths["valid"], "valid"), test_data, export,
                       test_stage=int(config.eval_stage))
    write_json(os.path.join(workdir, "stages.json"),
               {"boundaries": stage_boundaries(task.num_epochs, cc), "final_stage": task.final_stage})
    trainer = Trainer(config, task, workdir)
    accum = int(config.optim.get("grad_accum", 1) or 1)
    state = trainer.init_state(params, max(1, task.num_epochs * train_data.steps_per_epoch // accum))
    del params
    return trainer.fit(state)
