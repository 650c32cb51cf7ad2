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

Resume is exact (train/trainer.Trainer: params, optimizer state, step, epoch, data position).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict
from tqdm import tqdm

from latent_jax.data.coconut_json import load_coconut_json
from latent_jax.data.pipeline import (
    CoconutEvalData,
    CoconutTrainData,
    Geometry,
    collate_train,
    eval_geometry,
    geometry,
    load_split,
    repad,
)
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
from latent_jax.decoding.tova import tova_options_from_config
from latent_jax.latent.coconut import (
    check_thought_norm,
    coconut_diffusion_loss,
    coconut_loss,
    thought_topk,
)
from latent_jax.latent.curriculum import (
    CurriculumConfig,
    extract_answer,
    problem_format,
    scheduled_stage,
    stage_boundaries,
    stage_changed,
    train_sample,
    walk_sample,
)
from latent_jax.latent.probe import format_probe, frontier_probe, plot_probe
from latent_jax.models.config import ModelConfig
from latent_jax.models.decoder import init_params
from latent_jax.models.io import load_model as load_checkpoint, save_model
from latent_jax.parallel import to_host
from latent_jax.paths import barrier, is_primary, write_text
from latent_jax.tasks.coconut_model import generate_aligned, task_files
from latent_jax.tasks.common import load_model, model_config_from
from latent_jax.train.metrics import plot_series, read_metrics, wilson_interval
from latent_jax.train.trainer import Batch, MappedBatches, Task, Trainer, check_mode, quiet_logs, write_json

MODES = ("walks", "no_cot", "cot", "coconut")
METHODS = ("no_cot", "cot", "coconut")  # the modes scored on the test split (walks is the shared base)
MODE_TITLES = {"walks": "graph walks", "no_cot": "no-CoT", "cot": "CoT", "coconut": "Coconut"}


# ============================================================================ entry point
def run(config: ConfigDict, workdir: str, run_one: Callable | None = None, result_key: str = "test") -> dict:
    """Train and/or evaluate as `config` says: one run by `run_one` (default run_single), or each
    mode of config.chain as its own run in workdir/<mode>/ (with "walks" first, every later run
    starts from its model, the shared base; else coconut from the CoT best model when
    coconut_from_cot), then one accuracy table of each run's `result_key` ("": the run's
    results); returns the results."""
    check_mode(config)
    quiet_logs(config)
    run_one = run_one or run_single
    modes = [m.strip() for m in str(config.chain).split(",") if m.strip()]
    if not modes:
        return run_one(config, workdir)
    for m in modes:
        if m not in MODES:
            raise ValueError(f"config.chain has {m!r}; use a comma list of {', '.join(MODES)}")
    t0 = time.time()
    results, curves, boundaries = {}, {}, []
    # the paper starts Coconut from the CoT model; the from-scratch recipe (frontier supervision,
    # whose stage 0 is its own first-hop training) sets coconut_from_cot=False
    cot_dir = os.path.join(workdir, "cot") if "cot" in modes and config.coconut_from_cot else None
    base_dir = os.path.join(workdir, "walks") if "walks" in modes else None
    if config.mode == "eval":  # the base has no test split to score
        modes = [m for m in modes if m != "walks"]
    for i, m in enumerate(modes):
        sub = sub_config(config, m, workdir, cot_dir, base_dir)
        print(f"== {MODE_TITLES[m]} run -> {os.path.join(workdir, m)}", flush=True)
        results[m] = run_one(sub, os.path.join(workdir, m))
        if results[m].get("stopped"):  # config.max_steps: the later runs start from this one's model
            return chain_stopped(results[m], m, modes[i + 1:])
        if m != "walks":
            curves[MODE_TITLES[m]] = [{"epoch": r["val/epoch"], "accuracy": r["val/accuracy"]}
                                      for r in read_metrics(os.path.join(workdir, m)) if "val/accuracy" in r]
        if m == "coconut":
            boundaries = stage_boundaries(int(sub.num_epochs), curriculum_config(sub))
    plot = plot_accuracy(os.path.join(workdir, "val_accuracy.png"), curves, boundaries,
                         "validation accuracy by epoch", "Coconut stage boundary")
    methods = [m for m in modes if m != "walks"]
    test = {m: results[m] if result_key == "" else results[m].get(result_key, {}) for m in methods}
    table = format_table(test)
    base = None
    if "walks" in results:
        base = {k: results["walks"].get(k) for k in ("lookup_accuracy", "step")}
        table = format_base(base) + "\n\n" + table
    probe = test.get("coconut", {}).get("probe")
    if probe:
        table += "\n\n" + format_probe(probe)
    print(table, flush=True)
    summary = {"modes": methods, "test": test, "base": base, "wall_time_s": time.time() - t0, "plot": plot,
               "probe": probe}
    write_json(os.path.join(workdir, "results.json"), summary)
    write_text(os.path.join(workdir, "results_table.txt"), table + "\n")
    return summary


def chain_stopped(res: dict, mode: str, rest: list[str]) -> dict:
    """The chain's result when config.max_steps stopped the run of `mode` (resumable): where it
    stopped and which runs did not run; no table and no results.json, as nothing was scored."""
    return {"stopped": True, "run": MODE_TITLES[mode], "step": res.get("step"), "total_steps": res.get("total_steps"),
            "not_run": [MODE_TITLES[m] for m in rest]}


def sub_config(config: ConfigDict, mode: str, workdir: str, cot_dir: str | None,
               base_dir: str | None = None) -> ConfigDict:
    """The config of the chained run of `mode` in workdir/<mode>/: its chain_overrides applied,
    every method starting from base_dir/best_model (the shared base) or else Coconut from
    cot_dir/best_model, generated data and tokenizer shared."""
    sub = copy.deepcopy(config)
    with sub.unlocked():
        sub.chain = ""
        sub.chained = True  # the chain prints the summary (table and probe) once, at its end
        sub.coconut_mode = mode
        sub.update(config.chain_overrides.get(mode) or {})  # nested keys merged key by key
        if config.mode == "eval":
            sub.load_model_path = os.path.join(workdir, mode, "best_model")
        elif mode == "coconut" and cot_dir and not sub.load_model_path:
            sub.load_model_path = os.path.join(cot_dir, "best_model")
        elif mode != "walks" and base_dir and not sub.load_model_path:
            sub.load_model_path = os.path.join(base_dir, "best_model")
        if config.data.get("generate"):  # share one generated data set across the chained runs
            sub.data.generate_dir = config.data.generate_dir or os.path.join(workdir, "data")
        if "tokenizer_dir" in sub.data:  # and one trained tokenizer
            sub.data.tokenizer_dir = sub.data.tokenizer_dir or os.path.join(workdir, "tokenizer")
    return sub


def accuracy_interval(r: dict) -> tuple[float, float]:
    """The 95% Wilson interval of a test result's accuracy."""
    n = int(r["num_examples"])
    return wilson_interval(round(float(r["accuracy"]) * n), n)


def format_table(test: dict[str, dict]) -> str:
    """The final accuracy table (one row per mode, with the 95% interval of each accuracy) and,
    when no-CoT, CoT and Coconut were all scored, a one-line verdict on the paper's ordering."""
    lines = [f"{'method':<10} {'accuracy':>9} {'95% interval':>15} {'# tokens':>9} {'examples':>9}", "-" * 56]
    for m, r in test.items():
        if r:
            lo, hi = accuracy_interval(r)
            iv = f"{100 * lo:.1f}-{100 * hi:.1f}%"
            lines.append(f"{MODE_TITLES.get(m, m):<10} {100 * r['accuracy']:>8.1f}% {iv:>15} "
                         f"{r['mean_new_tokens']:>9.1f} {r['num_examples']:>9d}")
    if all(test.get(m) for m in METHODS):
        lines.append(verdict(test))
    return "\n".join(lines)


def verdict(test: dict[str, dict]) -> str:
    """One line: is the paper's result reproduced (Coconut first), is it significant (Coconut's 95%
    interval above both others'), and how CoT and no-CoT compare."""
    acc = {m: float(test[m]["accuracy"]) for m in METHODS}
    iv = {m: accuracy_interval(test[m]) for m in METHODS}
    if acc["coconut"] <= max(acc["cot"], acc["no_cot"]):
        return "verdict: the paper's result is NOT reproduced: Coconut is not first"
    sig = iv["coconut"][0] > max(iv["cot"][1], iv["no_cot"][1])
    rest = "CoT > no-CoT" if acc["cot"] > acc["no_cot"] else "no-CoT >= CoT"
    return ("verdict: Coconut first, as in the paper; " +
            ("its 95% interval lies above both others' (significant)" if sig else
             "its 95% interval overlaps another's (not significant)") + f"; {rest}")


def format_base(res: dict) -> str:
    """The shared base's line: its lookup accuracy on the validation walks."""
    return (f"shared base (graph walks, {res.get('step', 0)} updates): next node in its children's set "
            f"{100 * float(res.get('lookup_accuracy', 0.0)):.1f}% of validation walk steps")


def plot_accuracy(path: str, runs: dict[str, list[dict]], boundaries: list[int], title: str,
                  vline_label: str) -> str | None:
    """Validation accuracy by epoch of each run (rows with epoch and accuracy), the curriculum's
    stage boundaries dashed; None when no run has a row."""
    series = {k: ([r["epoch"] + 1 for r in rows], [r["accuracy"] for r in rows]) for k, rows in runs.items() if rows}
    if not series:
        return None
    return plot_series(path, series, "epoch", "validation accuracy", title=title,
                       vlines=[b + 0.5 for b in boundaries], vline_label=vline_label)


# ============================================================================ setup
def curriculum_config(config: ConfigDict) -> CurriculumConfig:
    """The CurriculumConfig of config.coconut_mode and config.coconut (every Coconut workflow's
    curriculum settings; defaults in configs/base.py coconut_settings)."""
    if config.coconut_mode not in MODES:
        raise ValueError(f"config.coconut_mode={config.coconut_mode!r}; use one of {', '.join(MODES)}")
    return CurriculumConfig.from_config({**config.coconut.to_dict(), "mode": config.coconut_mode,
                                         "seed": int(config.seed)})


def prepare_data(config: ConfigDict, workdir: str) -> dict[str, str]:
    """Paths of the train / valid / test files; generates ProsQA-style data when
    config.data.generate is 'prosqa' or 'prosqa_graph' (once; existing files are reused)."""
    d = config.data
    if d.generate:
        if d.generate not in ("prosqa", "prosqa_graph"):
            raise ValueError(f"config.data.generate={d.generate!r}; use 'prosqa', 'prosqa_graph' or '' "
                             "(read data.*_path)")
        out, g = d.generate_dir or os.path.join(workdir, "data"), d.gen
        paths = {s: os.path.join(out, f"{d.generate}_{s}.json") for s in ("train", "valid", "test")}
        # process 0 of a multi-host run writes the files; the others wait for them at the barrier
        if is_primary() and not all(os.path.exists(p) for p in paths.values()):
            gen = lambda *keys: {k: g[k] for k in ("seed", "min_hops", "max_hops", "decoy") + keys}  # noqa: E731
            if d.generate == "prosqa_graph":
                write_graph_splits(out, {s: g[s] for s in ("train", "valid", "test")},
                                   **gen("min_nodes", "max_nodes", "edges_per_node", "node_tokens"))
            else:
                write_prosqa(out, **gen("train", "valid", "test", "concepts", "branching", "phrasing"))
        barrier(f"prepare_data:{out}")
        return paths
    paths = {"train": d.train_path, "valid": d.val_path, "test": d.test_path or d.val_path}
    for k, p in paths.items():
        if not p:
            raise ValueError(f"config.data.{'val' if k == 'valid' else k}_path is empty; "
                             "set it or data.generate='prosqa'")
        if not os.path.exists(p):
            raise FileNotFoundError(f"data file {p} does not exist; fix config.data paths or "
                                    "set data.generate='prosqa'")
    return paths


def build_tokenizer(config: ConfigDict, workdir: str, train_path: str):
    """(tokenizer, tokenizer dir). From load_model_path / model.path when they hold tokenizer
    files, else data.tokenizer_dir (default workdir/tokenizer) or trained there on the training
    texts (reused on resume)."""
    tdir = config.data.tokenizer_dir or os.path.join(workdir, "tokenizer")
    has_files = lambda src: any(os.path.exists(os.path.join(src, f))  # noqa: E731
                                for f in ("tokenizer.json", "tokenizer_config.json"))
    for src in (config.load_model_path, config.model.path):
        if src and has_files(src):
            tok = load_tokenizer(src)
            add_coconut_tokens(tok)
            return tok, src
        if src and src == config.model.path:  # a pretrained model comes with its tokenizer
            raise ValueError(f"model.path={config.model.path} has no tokenizer files; copy tokenizer.json into it")
    # process 0 of a multi-host run trains and saves it; the others load it after the barrier
    tok = None
    if is_primary() and not has_files(tdir):
        rows = load_coconut_json(train_path, on_bad_row=config.on_bad_row)
        tok = train_tokenizer(text_corpus(rows, problem_format(config.data.format)), tdir,
                              vocab_size=int(config.data.tokenizer_vocab_size), kind=config.data.tokenizer_kind)
    barrier(f"build_tokenizer:{tdir}")
    if tok is None:
        tok = load_tokenizer(tdir)
        add_coconut_tokens(tok)
    return tok, tdir


def build_model(config: ConfigDict, tok) -> tuple[ModelConfig, dict]:
    """(ModelConfig, params): from load_model_path or model.path (HF dir or latent_jax
    checkpoint), or from scratch; the vocabulary grown to hold the Coconut tokens."""
    src = config.load_model_path or config.model.path
    if src:
        mcfg, params = load_model(config, src)
    else:
        mcfg = model_config_from(config.model, tok.vocab_size, tie_word_embeddings=config.model.tie_word_embeddings,
                                 bos_token_id=tok.bos_id, eos_token_id=(tok.eos_id,), pad_token_id=tok.pad_id)
        params = init_params(mcfg, jax.random.PRNGKey(int(config.seed)))
    if tok.vocab_size > mcfg.vocab_size:
        init_id = coconut_init_token_id(tok) if config.latent_init == "copy" else None
        params, mcfg = resize_embeddings(params, mcfg, tok.vocab_size, init_from_token_id=init_id)
    return mcfg, params


def coconut_data(config: ConfigDict, examples: dict[str, list], ids, pad_id: int, eval_batch_size: int) -> dict:
    """CoconutTrainData of examples["train"] (when present) and CoconutEvalData of every other
    split; evaluation sets are whole on every process (train/trainer.py)."""
    cc, bucket = curriculum_config(config), int(config.data.bucket)
    data = {k: CoconutEvalData(v, cc, ids, pad_id, eval_batch_size, bucket=bucket, name=k, process_index=0,
                               process_count=1) for k, v in examples.items() if k != "train"}
    if "train" in examples:
        data["train"] = CoconutTrainData(examples["train"], cc, ids, pad_id, int(config.batch_size),
                                         seed=int(config.seed), shuffle=True, drop_remainder=True, bucket=bucket)
    return data


def generation_settings(config: ConfigDict) -> tuple[dict, int]:
    """(decoding settings, test stage; -1 = the final trained stage): config.generation.<mode>
    and config.eval_stage (text configs), or config.eval (multimodal; sampling when temperature > 0)."""
    if config.get("coconut_mode") == "walks":  # the shared base generates nothing
        return dict(max_new_tokens=1, do_sample=False, temperature=0.0, top_p=1.0), -1
    if "generation" in config:
        g, stage = config.generation.get(config.coconut_mode), config.eval_stage
    else:
        g, stage = config.eval, config.eval.stage
    if g is None:
        raise ValueError(f"config.generation has no settings for mode {config.coconut_mode!r}; "
                         f"add generation.{config.coconut_mode}")
    do_sample = bool(g.do_sample) if "do_sample" in g else float(g.temperature) > 0
    return dict(max_new_tokens=int(g.max_new_tokens), do_sample=do_sample, temperature=float(g.temperature),
                top_p=float(g.top_p)), int(stage)


# ============================================================================ the task
class CoconutTask(Task):
    """Coconut for the Trainer (the module docstring); text or, with `embeds`, multimodal.

    data      {"train": CoconutTrainData (not in eval mode), "val" and "eval": CoconutEvalData};
              test() scores "eval" with the best model
    export_fn(path, params) saves the best model; load_fn(path) -> params reads it back
              (default tasks.common.load_model)
    embeds    an EmbeddingSource, the extra input embeddings of a batch (the multimodal image /
              video features): arrays(input_ids, example_idx, split) -> {embeds_override
              (B, T, D), embeds_override_mask (B, T)} for the rows `example_idx` of the split
              ('train' | 'val' | 'eval'), placed at their tokens in `input_ids`
    scorer    a Scorer: score(eb, row, text, split) -> a predictions.jsonl row with 'correct' or
              the dataset's fields; results(rows) -> a dict with 'accuracy' (default TextScorer)
    """

    def __init__(self, config: ConfigDict, workdir: str, mcfg: ModelConfig, tok, data: dict,
                 export_fn: Callable[[str, Any], None], load_fn: Callable[[str], Any] | None = None,
                 embeds=None, scorer=None):
        self.config, self.workdir, self.mcfg, self.tok, self.data = config, workdir, mcfg, tok, data
        self.cc, self.export_fn, self.load_fn, self.embeds = curriculum_config(config), export_fn, load_fn, embeds
        self.scorer = scorer or TextScorer(problem_format(config.data.format).answer_delimiter)
        self.name = str(config.coconut_mode)
        self.ids = tok.latent_ids
        self.bucket = int(config.data.bucket)
        self.remat = bool(config.remat_thoughts)
        self.thought_norm = check_thought_norm(str(config.thought_norm))
        self.settings, test_stage = generation_settings(config)
        self.num_epochs = int(config.num_epochs)
        # evaluation uses the thought count of the last trained stage unless test_stage is set
        self.final_stage = scheduled_stage(max(0, self.num_epochs - 1), self.cc)
        self.test_stage = self.final_stage if test_stage < 0 else test_stage
        self.test_dir = os.path.join(workdir, "test")
        # decoding inside the workflow: the KV-cache policy and the answer decoder (base.py)
        self.tova = tova_options_from_config(config.cache)
        self.answer = answer_options_from_config(config.answer, int(self.settings["max_new_tokens"]), int(tok.pad_id))
        # teacher-forced walk metrics (mode "walks"), one compile per latent column
        self._walk_eval = jax.jit(lambda p, b, start: coconut_loss(p, b, config=mcfg, latent_start=start, num_latent=0,
                                                                  set_loss=self.cc.set_loss)[1], static_argnums=2)

    # ---------------------------------------------------------------- training
    def compile_key(self):
        return ("coconut", self.mcfg, self.remat, self.thought_norm, self.cc.set_loss)

    def loss_fn(self, params, batch, static):
        start, num_latent, feedback = static
        if self.answer is not None:  # the answer span by the masked-diffusion objective
            return coconut_diffusion_loss(params, batch, config=self.mcfg, latent_start=start, num_latent=num_latent,
                                          mask_id=self.answer.mask_id, feedback=feedback, remat_thoughts=self.remat,
                                          thought_norm=self.thought_norm, shift=self.answer.shift_logits)
        return coconut_loss(params, batch, config=self.mcfg, latent_start=start, num_latent=num_latent,
                            feedback=feedback, remat_thoughts=self.remat, thought_norm=self.thought_norm,
                            set_loss=self.cc.set_loss)

    def steps_per_epoch(self) -> int:
        return self.data["train"].steps_per_epoch

    def train_batches(self, epoch, data_state):
        train, seed = self.data["train"], int(self.config.seed)
        g = geometry([train_sample(e, epoch, self.cc, self.ids) for e in train.examples], self.bucket)

        def batch(b) -> Batch:  # re-padded to the stage's Geometry: one compile per stage
            arrays = repad(b.arrays, b.latent_start, g.start, g.T, self.tok.pad_id, g.label_set)
            if self.embeds is not None:
                arrays.update(self.embeds.arrays(arrays["input_ids"], b.example_idx, "train"))
            if self.answer is not None:  # masked-diffusion noise seeds of (seed, epoch, example): exact on resume
                ex = np.asarray(b.example_idx, np.int64)
                arrays["noise_seed"] = ((ex * 1000003 + epoch * 7919 + seed) % (2 ** 31)).astype(np.uint32)
            return Batch((g.start, max(b.num_latent, g.num_latent), bool(b.feedback)), arrays)

        return MappedBatches(train.iterator(epoch, data_state), batch)

    def log_fields(self, epoch):
        return {"stage": scheduled_stage(epoch, self.cc)}

    def on_epoch_start(self, trainer, state, epoch, resumed):
        if self.config.optim.reset_on_stage_change and stage_changed(epoch, self.cc) and epoch > 0 and not resumed:
            state = trainer.reset_optimizer(state)
        return state

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, trainer, params, epoch):
        if self.cc.mode == "walks":  # the shared base: how often its next node is in the children's set
            acc = self.lookup_accuracy(params, self.data["val"].examples)
            return {"accuracy": acc}, acc
        # frontier supervision: every epoch is scored on the final task (all thoughts, then the
        # answer), since intermediate stages end in a frontier node rather than an answer
        stage = scheduled_stage(epoch, self.cc)
        val_stage = self.final_stage if self.cc.frontier else stage
        res = self.score(params, self.data["val"], val_stage, int(self.config.seed) + epoch, desc="valid", split="val")
        return {"accuracy": res["accuracy"], "mean_new_tokens": res["mean_new_tokens"]}, (
            res["accuracy"] if val_stage == self.final_stage else None)

    def lookup_accuracy(self, params: dict, examples) -> float:
        """Graph walks (mode "walks"): the share of walk steps of `examples` (their epoch-0 walks)
        whose most likely next token is one of the current node's children, teacher-forced."""
        samples = [walk_sample(e, 0, self.cc) for e in examples]
        g, bs, pad = geometry(samples, self.bucket), int(self.config.eval_batch_size), self.tok.pad_id
        hit = n = 0.0
        for i in range(0, len(samples), bs):
            b = collate_train(samples[i : i + bs], bs, pad, self.bucket)
            arrays = repad(b.arrays, b.latent_start, g.start, g.T, pad, g.label_set)
            aux = self._walk_eval(params, {k: jnp.asarray(v) for k, v in arrays.items()}, g.start)
            hit += float(aux["token_accuracy"]) * int(aux["n_tokens"])
            n += int(aux["n_tokens"])
        return hit / max(n, 1.0)

    def export(self, trainer, params):
        # the params as they are on the mesh: Orbax's save is collective, each process writes
        # its own shards (no process need hold a whole parameter, as with FSDP across hosts)
        self.export_fn(os.path.join(self.workdir, "best_model"), params)

    def generate(self, params: dict, eb, rng, geom: Geometry, split: str = "eval"):
        """Batched cached generation for an EvalBatch re-padded to `geom`; `split` names the
        embedding source's rows."""
        a, start, n = self.padded(eb, geom)
        extra = {} if self.embeds is None else {
            k: jnp.asarray(v) for k, v in self.embeds.arrays(a["input_ids"], eb.example_idx, split).items()}
        # the decoding `python -m latent_jax.generate` runs on the saved model (tasks/coconut_model.py)
        return generate_aligned(params, self.mcfg, a, start, n, rng, settings=self.settings,
                                stop_ids=[self.tok.eos_id], pad_id=self.tok.pad_id, feedback=bool(eb.feedback),
                                thought_norm=self.thought_norm, answer=self.answer, tova=self.tova, extra=extra)

    def padded(self, eb, geom: Geometry) -> tuple[dict, int, int]:
        """An EvalBatch's arrays re-padded to `geom`, its latent start and its thought count."""
        return (repad(eb.arrays, eb.latent_start, geom.start, geom.T, self.tok.pad_id), geom.start,
                max(eb.num_latent, geom.num_latent))

    def thought_tokens(self, params: dict, eb, k: int, geom: Geometry):
        """(ids, probs, is_thought) as numpy, (B, num_latent, k) and (B, num_latent): the top-k
        tokens each fed-back thought of an EvalBatch decodes to through the LM head."""
        a, start, n = self.padded(eb, geom)
        ids, probs = thought_topk(
            params, jnp.asarray(a["input_ids"]), jnp.asarray(a["attention_mask"]), jnp.asarray(a["latent_mask"]),
            config=self.mcfg, latent_start=start, num_latent=n, k=k, thought_norm=self.thought_norm)
        ids, probs = to_host((ids, probs))
        return ids, probs, np.asarray(a["latent_mask"])[:, start : start + n].astype(bool)

    def score(self, params: dict, eval_data, stage: int, seed: int, out_dir: str | None = None,
              desc: str = "eval", split: str = "eval") -> dict:
        """Generation accuracy on `eval_data` at `stage` (one geometry for validation and test).
        With out_dir, writes predictions.jsonl and results.json there."""
        tok, rng, rows = self.tok, jax.random.PRNGKey(seed), []
        evals = [e for k, d in self.data.items() if k != "train" for e in d.examples]  # one geometry for all
        geom = eval_geometry(evals, stage, self.cc, self.ids, self.bucket)
        max_new = int(self.settings["max_new_tokens"])
        k_th = int(self.config.decode_thoughts) if self.embeds is None else 0
        ds = eval_data.dataset(stage)
        for bi in tqdm(range(len(ds)), desc=desc, leave=False, disable=not self.config.progress, file=sys.stderr):
            eb = ds[bi]
            rng, sub = jax.random.split(rng)
            out = self.generate(params, eb, sub, geom, split)
            toks, lens = to_host((out.tokens, out.lengths))  # gathered when sharded across processes
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
        n_trunc = sum(r["truncated"] for r in rows)
        mean = lambda key: float(np.mean([r[key] for r in rows])) if rows else 0.0  # noqa: E731
        res = {**self.scorer.results(rows), "mean_new_tokens": mean("num_tokens"),
               "mean_forward_passes": mean("forward_passes"),
               "answer_decoding": "diffusion" if self.answer is not None else "autoregressive",
               "cache_policy": "tova" if self.tova is not None else "full",
               "num_examples": len(rows), "truncated": int(n_trunc), "stage": int(stage),
               **{f"generation_{k}": v for k, v in self.settings.items()}}
        graphs = {e.idx: e.extra for e in eval_data.examples}
        probed = [(r["thoughts"], graphs[r["idx"]]) for r in rows
                  if "thoughts" in r and "reach" in graphs.get(r["idx"], {})]
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
        """Score the "eval" split at the test stage into self.test_dir (workdir/test/)."""
        res = self.score(params, self.data["eval"], self.test_stage, seed, self.test_dir, desc="test")
        if "probe" in res:
            res["probe"]["plot"] = plot_probe(os.path.join(self.workdir, "thought_probe.png"), res["probe"])
            if not self.config.get("chained", False):
                print(format_probe(res["probe"]), flush=True)
        print(f"[{self.name}] test accuracy {100 * res['accuracy']:.1f}% "
              f"({res['num_examples']} examples, {res['mean_new_tokens']:.1f} new tokens)", flush=True)
        return res

    def finish(self, trainer, state, out):
        if self.cc.mode == "walks":  # the base has no answers to score
            out["lookup_accuracy"] = out["best"]
            return out
        title = MODE_TITLES.get(self.name, self.name)
        out["plot"] = plot_accuracy(os.path.join(self.workdir, "val_accuracy.png"),
                                    {title: [h for h in out["history"] if "accuracy" in h]},
                                    stage_boundaries(self.num_epochs, self.cc), f"{title}: validation accuracy",
                                    "stage boundary")
        res = self.test(self.load_best(trainer, like=state["params"]), int(self.config.seed))
        trainer.writer.write(out["step"], {"accuracy": res["accuracy"], "mean_new_tokens": res["mean_new_tokens"]},
                             prefix="test/")
        out["test"] = res
        return out

    def load_best(self, trainer, like: Any = None) -> dict:
        """The exported best model (workdir/best_model) on the mesh. With `like` (the trained
        params) each process restores only its own shards, placed as `like`'s."""
        path = os.path.join(self.workdir, "best_model")
        if self.load_fn is None and like is not None:
            return load_checkpoint(path, shardings=jax.tree.map(lambda x: x.sharding, like))[1]
        return trainer.put(self.load_fn(path) if self.load_fn else load_model(self.config, path)[1])


class TextScorer:
    """The Scorer of text problems: exact match of the answer after the format's delimiter (e.g. '###')."""

    def __init__(self, delimiter: str):
        self.delimiter = delimiter

    def score(self, eb, row: int, text: str, split: str) -> dict:
        pred = extract_answer(text, self.delimiter)
        gold = eb.answers[row].replace(",", "").strip()
        return {"idx": int(eb.example_idx[row]), "question": eb.questions[row], "generated_text": text,
                "prediction": pred, "answer": gold, "correct": pred == gold}

    def results(self, rows: list[dict]) -> dict:
        return {"accuracy": float(np.mean([r["correct"] for r in rows])) if rows else 0.0}


# ============================================================================ one run
def run_single(config: ConfigDict, workdir: str) -> dict:
    """Train (or, with mode == 'eval', only evaluate) one Coconut mode in `workdir`."""
    os.makedirs(workdir, exist_ok=True)
    cc = curriculum_config(config)
    paths = prepare_data(config, workdir)
    tok, tok_dir = build_tokenizer(config, workdir, paths["train"])
    mcfg, params = build_model(config, tok)
    d = config.data
    splits = {"eval": "test"} if config.mode == "eval" else {"eval": "test", "train": "train", "val": "valid"}
    examples = {k: load_split(paths[f], tok, cc, max_length=d.max_length or None, fmt=problem_format(d.format),
                              max_rows=(d.max_train_rows if k == "train" else d.max_eval_rows) or None,
                              on_bad_row=config.on_bad_row)  # error | skip (count and skip corrupt rows)
                for k, f in splits.items()}
    data = coconut_data(config, examples, tok.latent_ids, tok.pad_id, int(config.eval_batch_size))
    # best_model carries its coconut.json (thought layout, decoding) for `latent_jax.generate`
    # (`task` is read when the best model is exported, after it is bound here)
    task = CoconutTask(config, workdir, mcfg, tok, data,
                       lambda path, p: save_model(path, p, mcfg, tok_dir, extra_files=task_files(task)))
    trainer = Trainer(config, task, workdir)
    if config.mode == "eval":
        res = task.test(trainer.put(params), int(config.seed))
        print(format_table({config.coconut_mode: res}), flush=True)
        return {"test": res}
    state = trainer.init_state(params, max(1, task.num_epochs * task.steps_per_epoch() // int(config.optim.grad_accum)))
    del params
    return trainer.fit(state)
