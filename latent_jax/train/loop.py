"""Coconut training and evaluation: `run(config, workdir)` for the `coconut` workflow.

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

Resume is exact: the latest checkpoint holds params, optimizer state, step, epoch, stage
and the data iterator position, and a restarted run continues from it.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from latent_jax.decoding.sampling import SamplingParams
from latent_jax.latent.coconut import check_thought_norm, coconut_generate, coconut_loss, thought_topk
from latent_jax.latent.probe import frontier_probe
from latent_jax.latent.curriculum import (
    CurriculumConfig,
    extract_answer,
    problem_format,
    scheduled_stage,
    stage_boundaries,
    stage_changed,
)
from latent_jax.models.config import ModelConfig
from latent_jax.models.decoder import init_params
from latent_jax.parallel import batch_sharding, make_mesh, param_shardings, replicated
from latent_jax.train.metrics import MetricsWriter, plot_series, read_metrics
from latent_jax.train.optim import make_optimizer

log = logging.getLogger(__name__)

MODES = ("no_cot", "cot", "coconut")
MODE_TITLES = {"no_cot": "no-CoT", "cot": "CoT", "coconut": "Coconut"}
BATCH_KEYS = ("input_ids", "attention_mask", "labels", "latent_mask", "position_ids")


# ============================================================================ entry point
def run(config: ConfigDict, workdir: str) -> dict:
    """Train and/or evaluate as `config` says; returns a dict of results."""
    if not config.get("verbose", False):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every read and write at INFO
    if config.mode not in ("train", "eval"):
        raise ValueError(f"config.mode={config.mode!r}; use 'train' or 'eval'")
    chain = [m.strip() for m in str(config.get("chain", "") or "").split(",") if m.strip()]
    if chain:
        return run_chain(config, workdir, chain)
    return run_single(config, workdir)


def _sub_config(config: ConfigDict, mode: str, workdir: str, cot_dir: str | None) -> ConfigDict:
    sub = copy.deepcopy(config)
    with sub.unlocked():
        sub.chain = ""
        sub.coconut_mode = mode
        over = config.get("chain_overrides", ConfigDict()).get(mode)
        if over is not None:
            _deep_update(sub, over)
        if config.mode == "eval":
            sub.load_model_path = os.path.join(workdir, mode, "best_model")
        elif mode == "coconut" and cot_dir and not sub.load_model_path:
            sub.load_model_path = os.path.join(cot_dir, "best_model")
        if config.data.generate:  # share one generated data set across the chained runs
            sub.data.generate_dir = config.data.get("generate_dir", "") or os.path.join(workdir, "data")
        sub.data.tokenizer_dir = sub.data.get("tokenizer_dir", "") or os.path.join(workdir, "tokenizer")
    return sub


def _deep_update(dst: ConfigDict, src: Any) -> None:
    for k, v in (src.items() if hasattr(src, "items") else []):
        if hasattr(v, "items") and k in dst and hasattr(dst[k], "items"):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def run_chain(config: ConfigDict, workdir: str, modes: list[str]) -> dict:
    """Runs each mode as its own run in workdir/<mode>/ (coconut from the CoT best model),
    then prints the test accuracy table."""
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
        sub = _sub_config(config, m, workdir, cot_dir)
        print(f"== {MODE_TITLES[m]} run -> {os.path.join(workdir, m)}", flush=True)
        results[m] = run_single(sub, os.path.join(workdir, m))
    plot = _plot_chain(workdir, modes, config)
    table = format_table({m: results[m].get("test", {}) for m in modes})
    probe = results.get("coconut", {}).get("test", {}).get("probe")
    if probe:
        table += "\n\n" + format_probe(probe)
    print(table, flush=True)
    summary = {
        "modes": modes,
        "test": {m: results[m].get("test", {}) for m in modes},
        "wall_time_s": time.time() - t0,
        "plot": plot,
        "probe": probe,
    }
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(workdir, "results_table.txt"), "w") as f:
        f.write(table + "\n")
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
    return CurriculumConfig(
        mode=config.coconut_mode,
        ablation=config.get("ablation", "none"),
        c_thought=int(config.c_thought),
        epochs_per_stage=int(config.epochs_per_stage),
        max_latent_stage=int(config.max_latent_stage),
        pad_latent_to_max=bool(config.pad_latent_to_max),
        uniform_prob=float(config.uniform_prob),
        seed=int(config.seed),
        supervision=str(config.get("supervision", "steps")),
        latent_markers=bool(config.get("latent_markers", True)),
        thought_labels=str(config.get("thought_labels", "none")),
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
            from latent_jax.data.prosqa_graph import write_graph_splits

            write_graph_splits(out, {"train": g.train, "valid": g.valid, "test": g.test}, seed=g.seed,
                               min_nodes=g.min_nodes, max_nodes=g.max_nodes, edges_per_node=g.edges_per_node,
                               min_hops=g.min_hops, max_hops=g.max_hops, node_tokens=g.node_tokens,
                               decoy=float(g.decoy))
        else:
            from latent_jax.data.prosqa import write_prosqa

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
    from latent_jax.data.coconut_json import load_coconut_json
    from latent_jax.data.tokenizer import add_coconut_tokens, load_tokenizer, text_corpus, train_tokenizer

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
    from latent_jax.data.tokenizer import coconut_init_token_id, resize_embeddings

    m = config.model
    overrides = dict(dtype=m.dtype, scan_layers=bool(m.scan_layers), remat_policy=m.remat_policy)
    src = config.get("load_model_path", "") or m.path
    if src:
        from latent_jax.train.checkpoint import load_any

        mcfg, params = load_any(src, dtype=m.param_dtype, scan_layers=bool(m.scan_layers))
        mcfg = mcfg.replace(dtype=m.dtype, remat_policy=m.remat_policy)
    else:
        mcfg = ModelConfig(
            model_type=m.model_type,
            vocab_size=tok.vocab_size,
            hidden_size=m.hidden_size,
            intermediate_size=m.intermediate_size,
            num_hidden_layers=m.num_hidden_layers,
            num_attention_heads=m.num_attention_heads,
            num_key_value_heads=m.num_key_value_heads,
            head_dim=m.head_dim,
            max_position_embeddings=m.max_position_embeddings,
            tie_word_embeddings=bool(m.get("tie_word_embeddings", False)),
            bos_token_id=tok.bos_id,
            eos_token_id=(tok.eos_id,),
            pad_token_id=tok.pad_id,
            param_dtype=m.param_dtype,
            **overrides,
        )
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


def train_geometry(examples, epoch: int, cc: CurriculumConfig, ids, bucket: int) -> tuple[int, int]:
    from latent_jax.latent.curriculum import train_sample

    return geometry([(s.anchor, len(s.input_ids), s.n_latent) for s in (train_sample(e, epoch, cc, ids) for e in examples)],
                    bucket)


def eval_geometry(examples, stage: int, cc: CurriculumConfig, ids, bucket: int) -> tuple[int, int]:
    from latent_jax.latent.curriculum import eval_prompt

    return geometry([(p.anchor, len(p.input_ids), p.n_latent) for p in (eval_prompt(e, stage, cc, ids) for e in examples)],
                    bucket)


# ============================================================================ steps
_STEP_CACHE: dict[tuple, Any] = {}

class Trainer:
    """Jitted, sharded train steps (one compile per batch geometry) and batched generation."""

    def __init__(self, config: ConfigDict, mcfg: ModelConfig, tx: optax.GradientTransformation, mesh,
                 tx_key: str = ""):
        self.config, self.mcfg, self.tx, self.mesh = config, mcfg, tx, mesh
        self.tx_key = tx_key or str(id(tx))
        self._state_example = None
        self._steps: dict[tuple, Any] = {}
        self._state_sh = None
        self.remat = bool(config.get("remat_thoughts", True))
        self.thought_norm = check_thought_norm(str(config.get("thought_norm", "none")))

    def shardings(self, state: dict):
        if self._state_sh is None:
            self._state_sh = param_shardings(state, self.mesh)
        return self._state_sh

    def init_state(self, params: dict) -> dict:
        params = jax.device_put(params, param_shardings(params, self.mesh))
        opt_sh = param_shardings(jax.eval_shape(self.tx.init, params), self.mesh)
        opt_state = jax.jit(self.tx.init, out_shardings=opt_sh)(params)
        state = {"params": params, "opt_state": opt_state, "step": jnp.zeros((), jnp.int32)}
        state = jax.device_put(state, self.shardings(state))
        self._state_example = state
        return state

    def reset_optimizer(self, state: dict) -> dict:
        opt_sh = self.shardings(state)["opt_state"]
        state = dict(state)
        state["opt_state"] = jax.jit(self.tx.init, out_shardings=opt_sh)(state["params"])
        return state

    def place_batch(self, arrays: dict) -> dict:
        out = {}
        for k in BATCH_KEYS:
            a = np.asarray(arrays[k])
            out[k] = jax.make_array_from_process_local_data(batch_sharding(self.mesh, a.ndim), a)
        return out

    def train_step(self, state: dict, batch, geom: tuple[int, int] | None = None, pad_id: int = 0) -> tuple[dict, dict]:
        """One optimizer step on a CoconutBatch; `geom` (latent_start, T) re-pads it to a fixed shape."""
        arrays, start = batch.arrays, batch.latent_start
        if geom is not None:
            arrays, start = repad(arrays, start, geom[0], geom[1], pad_id), geom[0]
        key = (start, _num_latent(batch, geom), bool(batch.feedback))
        # compiled steps are shared by runs in one process with the same model, optimizer and mesh
        ckey = (self.mcfg, self.tx_key, self.mesh, self.remat, self.thought_norm, key)
        fn = _STEP_CACHE.get(ckey)
        if fn is None:
            fn = _STEP_CACHE[ckey] = self._make_step(*key, self._state_example)
        return fn(state, self.place_batch(arrays))


    def train_step_fn(self, latent_start: int, num_latent: int, feedback: bool):
        """The un-jitted Coconut train step (state, batch) -> (state, metrics) for one batch
        geometry; the text and multimodal trainers jit it with their own shardings."""
        mcfg, tx, remat, tn = self.mcfg, self.tx, self.remat, self.thought_norm

        def step(state, batch):
            def lf(p):
                return coconut_loss(p, batch, config=mcfg, latent_start=latent_start, num_latent=num_latent,
                                    feedback=feedback, remat_thoughts=remat, thought_norm=tn)

            (loss, aux), grads = jax.value_and_grad(lf, has_aux=True)(state["params"])
            updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
            params = optax.apply_updates(state["params"], updates)
            metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}
            return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

        return step

    def _make_step(self, latent_start: int, num_latent: int, feedback: bool, state: dict):
        step = self.train_step_fn(latent_start, num_latent, feedback)
        sh = self.shardings(state)
        bsh = {k: batch_sharding(self.mesh, 2) for k in BATCH_KEYS}
        return jax.jit(step, in_shardings=(sh, bsh), out_shardings=(sh, replicated(self.mesh)), donate_argnums=0)

    def generate(self, params: dict, eb, settings: dict, rng, stop_ids, pad_id: int,
                 geom: tuple[int, int] | None = None):
        """Batched cached generation for an EvalBatch (re-padded to `geom` when given)."""
        sp = SamplingParams.make(settings["temperature"] if settings["do_sample"] else 0.0, settings["top_p"])
        a, start = _eval_arrays(eb, geom, pad_id)
        return coconut_generate(
            params, jnp.asarray(a["input_ids"]), jnp.asarray(a["attention_mask"]), jnp.asarray(a["latent_mask"]),
            rng, sp, stop_ids, config=self.mcfg, latent_start=start, num_latent=_num_latent(eb, geom),
            max_new_tokens=settings["max_new_tokens"], pad_id=pad_id, feedback=bool(eb.feedback),
            thought_norm=self.thought_norm,
        )

    def thought_tokens(self, params: dict, eb, k: int, pad_id: int, geom: tuple[int, int] | None = None):
        """(ids, probs, is_thought) as numpy, (B, num_latent, k) and (B, num_latent): the top-k
        tokens each fed-back thought of an EvalBatch decodes to through the LM head."""
        a, start = _eval_arrays(eb, geom, pad_id)
        ids, probs = thought_topk(
            params, jnp.asarray(a["input_ids"]), jnp.asarray(a["attention_mask"]), jnp.asarray(a["latent_mask"]),
            config=self.mcfg, latent_start=start, num_latent=_num_latent(eb, geom), k=k, thought_norm=self.thought_norm)
        is_thought = np.asarray(a["latent_mask"])[:, start : start + _num_latent(eb, geom)].astype(bool)
        return np.asarray(ids), np.asarray(probs), is_thought


def _eval_arrays(eb, geom: tuple[int, int] | None, pad_id: int) -> tuple[dict, int]:
    """An EvalBatch's arrays and latent_start, re-padded to `geom` when given."""
    if geom is None:
        return eb.arrays, eb.latent_start
    return repad(eb.arrays, eb.latent_start, geom[0], geom[1], pad_id), geom[0]


# ============================================================================ evaluation
def evaluate(trainer: Trainer, params: dict, eval_data, stage: int, tok, settings: dict, seed: int,
             out_dir: str | None = None, desc: str = "eval", progress: bool = True,
             geom: tuple[int, int] | None = None) -> dict:
    """Generation accuracy on `eval_data` at `stage` (prompts re-padded to `geom`). With
    out_dir, writes predictions.jsonl and results.json there."""
    from tqdm import tqdm

    stop = jnp.asarray([tok.eos_id], jnp.int32)
    rng = jax.random.PRNGKey(seed)
    rows, n_tok = [], []
    max_new = int(settings["max_new_tokens"])
    k_th = int(trainer.config.get("decode_thoughts", 0))
    delim = problem_format(str(trainer.config.data.get("format", "text"))).answer_delimiter
    ds = eval_data.dataset(stage)
    for bi in tqdm(range(len(ds)), desc=desc, leave=False, disable=not progress, file=sys.stderr):
        eb = ds[bi]
        rng, sub = jax.random.split(rng)
        out = trainer.generate(params, eb, settings, sub, stop, tok.pad_id, geom)
        toks, lens = np.asarray(out.tokens), np.asarray(out.lengths)
        th = None
        if k_th > 0 and eb.num_latent > 0 and eb.feedback:
            th = trainer.thought_tokens(params, eb, k_th, tok.pad_id, geom)
        for r in range(toks.shape[0]):
            if eb.example_idx[r] < 0:
                continue
            ids = toks[r, : lens[r]].tolist()
            body = ids[:-1] if ids and ids[-1] == tok.eos_id else ids
            text = tok.decode(body, skip_special_tokens=True)
            pred = extract_answer(text, delim)
            gold = eb.answers[r].replace(",", "").strip()
            rows.append({
                "idx": int(eb.example_idx[r]),
                "question": eb.questions[r],
                "generated_text": text,
                "generated_ids": ids,
                "prediction": pred,
                "answer": gold,
                "correct": pred == gold,
                "num_tokens": int(lens[r]),
                # stopped by max_new_tokens, not by EOS: the answer may be cut off
                "truncated": bool(len(ids) >= max_new and ids[-1] != tok.eos_id),
            })
            if th is not None:  # per thought: its top-k tokens through the LM head, with probabilities
                t_ids, t_probs, is_t = th
                rows[-1]["thoughts"] = [
                    [[tok.decode([int(t)]), round(float(p), 4)] for t, p in zip(t_ids[r, i], t_probs[r, i])]
                    for i in range(t_ids.shape[1]) if is_t[r, i]
                ]
            n_tok.append(int(lens[r]))
    acc = float(np.mean([r["correct"] for r in rows])) if rows else 0.0
    n_trunc = sum(r["truncated"] for r in rows)
    res = {"accuracy": acc, "mean_new_tokens": float(np.mean(n_tok)) if n_tok else 0.0,
           "num_examples": len(rows), "truncated": int(n_trunc), "stage": int(stage),
           **{f"generation_{k}": v for k, v in settings.items()}}
    graphs = {e.idx: e.extra for e in eval_data.examples}
    probed = [(r["thoughts"], graphs[r["idx"]]) for r in rows if "thoughts" in r and "reach" in graphs.get(r["idx"], {})]
    if probed:  # graph problems: do the thoughts hold the BFS frontier of their depth?
        res["probe"] = frontier_probe(probed)
    if n_trunc:
        print(f"[{desc}] warning: {n_trunc} of {len(rows)} generations stopped at max_new_tokens={max_new} "
              "before EOS (answers may be cut off); raise config.generation.<mode>.max_new_tokens", flush=True)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "predictions.jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(res, f, indent=2)
    return res


# ============================================================================ one run
def run_single(config: ConfigDict, workdir: str) -> dict:
    """Train (or, with mode == 'eval', only evaluate) one Coconut mode in `workdir`."""
    from latent_jax.data.pipeline import CoconutEvalData, CoconutTrainData, load_split
    from latent_jax.train.checkpoint import TrainCheckpointer, save_model

    os.makedirs(workdir, exist_ok=True)
    if config.coconut_mode not in MODES:
        raise ValueError(f"config.coconut_mode={config.coconut_mode!r}; use one of {', '.join(MODES)}")
    cc = curriculum_config(config)
    progress = bool(config.get("progress", True))
    paths = prepare_data(config, workdir)
    tok, tok_dir = build_tokenizer(config, workdir, paths["train"])
    mcfg, params = build_model(config, tok)
    ids = tok.latent_ids
    d = config.data
    max_len = int(d.max_length) if d.get("max_length", 0) else None
    bucket = int(d.get("bucket", 16))
    fmt = problem_format(str(d.get("format", "text")))
    bad_rows = str(config.get("on_bad_row", "error"))  # error | skip (count and skip corrupt rows)
    settings = _gen_settings(config, config.coconut_mode)
    mesh = make_mesh(dict(config.mesh))
    final_stage = scheduled_stage(max(0, int(config.num_epochs) - 1), cc)
    test_stage = int(config.get("eval_stage", -1))
    test_stage = final_stage if test_stage < 0 else test_stage
    eval_bs = int(config.get("eval_batch_size", config.batch_size))

    def eval_set(path, name):
        ex = load_split(path, tok, cc, max_length=max_len, max_rows=d.get("max_eval_rows", None) or None, fmt=fmt,
                        on_bad_row=bad_rows)
        return CoconutEvalData(ex, cc, ids, tok.pad_id, eval_bs, bucket=bucket, name=name)

    test_data = eval_set(paths["test"], "test")

    if config.mode == "eval":
        trainer = Trainer(config, mcfg, optax.identity(), mesh)
        params = jax.device_put(params, param_shardings(params, mesh))
        res = evaluate(trainer, params, test_data, test_stage, tok, settings, int(config.seed),
                       os.path.join(workdir, "test"), desc=f"test {config.coconut_mode}", progress=progress,
                       geom=eval_geometry(test_data.examples, test_stage, cc, ids, bucket))
        print(format_table({config.coconut_mode: res}), flush=True)
        return {"test": res}

    train_ex = load_split(paths["train"], tok, cc, max_length=max_len, max_rows=d.get("max_train_rows", None) or None, fmt=fmt,
                          on_bad_row=bad_rows)
    train_data = CoconutTrainData(train_ex, cc, ids, tok.pad_id, int(config.batch_size), seed=int(config.seed),
                                  shuffle=True, drop_remainder=True, bucket=bucket)
    val_data = eval_set(paths["valid"], "valid")
    num_epochs = int(config.num_epochs)
    accum = int(config.optim.get("grad_accum", 1) or 1)
    total_updates = max(1, num_epochs * train_data.steps_per_epoch // accum)
    tx = make_optimizer(params, config.optim, total_updates)
    tx_key = json.dumps([config.optim.to_dict(), total_updates], sort_keys=True, default=str)
    trainer = Trainer(config, mcfg, tx, mesh, tx_key=tx_key)
    state = trainer.init_state(params)
    eval_examples = val_data.examples + test_data.examples
    eval_geom = lambda st: eval_geometry(eval_examples, st, cc, ids, bucket)  # noqa: E731
    del params
    reset_opt = bool(config.get("reset_optimizer", False) or config.optim.get("reset_on_stage_change", False))

    writer = MetricsWriter(workdir, config.get("wandb_project", ""), config.to_dict())
    ckpt = TrainCheckpointer(os.path.join(workdir, "checkpoints"), keep_best=int(config.keep_best),
                             best_metric="accuracy")
    with open(os.path.join(workdir, "stages.json"), "w") as f:
        json.dump({"boundaries": stage_boundaries(num_epochs, cc), "final_stage": final_stage}, f)

    # ------------------------------------------------------------------ resume
    start_epoch, data_state, history = int(config.get("start_epoch", 0) or 0), None, []
    best_final = -1.0
    restored = None
    if ckpt.latest_step() is not None:
        template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        restored = ckpt.restore_latest(template)
    if restored is not None:
        state, extra = restored
        start_epoch = int(extra["next_epoch"])
        data_state = extra.get("data_state")
        history = list(extra.get("history", []))
        best_final = float(extra.get("best_final", -1.0))
        print(f"resumed from step {int(state['step'])} (epoch {start_epoch})", flush=True)

    def save(epoch_next: int, dstate, metrics=None):
        ckpt.save(int(state["step"]), state, metrics,
                  {"next_epoch": epoch_next, "data_state": dstate, "history": history, "best_final": best_final,
                   "stage": scheduled_stage(min(epoch_next, num_epochs - 1), cc)})
        ckpt.wait()

    from tqdm import tqdm

    log_every = max(1, int(config.log_every))
    max_steps = int(config.get("max_steps", 0) or 0)
    ckpt_every = int(config.get("checkpoint_every_steps", 0) or 0)
    stopped = False
    t_start = time.time()
    step = int(state["step"])  # counted on the host: reading state["step"] would block every step
    for epoch in range(start_epoch, num_epochs):
        stage = scheduled_stage(epoch, cc)
        resuming_mid_epoch = data_state is not None
        if reset_opt and stage_changed(epoch, cc) and epoch > 0 and not resuming_mid_epoch:
            state = trainer.reset_optimizer(state)
        geom = train_geometry(train_data.examples, epoch, cc, ids, bucket)
        it = train_data.iterator(epoch, data_state)
        data_state = None
        bar = tqdm(total=len(it), initial=int(it.get_state()["next_index"]), desc=f"{config.coconut_mode} epoch {epoch + 1}/{num_epochs} stage {stage}",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)
        for batch in it:
            state, m = trainer.train_step(state, batch, geom, tok.pad_id)
            step += 1
            bar.update(1)
            if step % log_every == 0:
                m = {k: float(v) for k, v in m.items()}
                bar.set_postfix(loss=f"{m['loss']:.4f}")
                writer.write(step, {**m, "epoch": epoch, "stage": stage}, prefix="train/")
            if ckpt_every and step % ckpt_every == 0:
                save(epoch, it.get_state())
            if max_steps and step >= max_steps:
                save(epoch, it.get_state())
                stopped = True
                break
        bar.close()
        if stopped:
            break
        if (epoch + 1) % int(config.get("eval_every_epochs", 1)) and epoch + 1 < num_epochs:
            save(epoch + 1, None)
            continue
        # ---------------------------------------------------------- validation
        # frontier supervision: every epoch is scored on the final task (all thoughts, then the
        # answer), since intermediate stages end in a frontier node rather than an answer
        val_stage = final_stage if cc.frontier else stage
        res = evaluate(trainer, state["params"], val_data, val_stage, tok, settings, int(config.seed) + epoch,
                       desc="valid", progress=progress, geom=eval_geom(val_stage))
        history.append({"epoch": epoch, "stage": stage, "accuracy": res["accuracy"]})
        writer.write(int(state["step"]), {"accuracy": res["accuracy"], "mean_new_tokens": res["mean_new_tokens"],
                                          "epoch": epoch, "stage": stage}, prefix="val/")
        print(f"[{config.coconut_mode}] epoch {epoch + 1}/{num_epochs} stage {stage}: val accuracy "
              f"{100 * res['accuracy']:.1f}%  ({time.time() - t_start:.0f}s)", flush=True)
        if val_stage == final_stage and res["accuracy"] > best_final:
            best_final = res["accuracy"]
            save_model(os.path.join(workdir, "best_model"), jax.device_get(state["params"]), mcfg, tok_dir)
        save(epoch + 1, None, {"accuracy": res["accuracy"]})
    ckpt.close()

    out: dict[str, Any] = {"history": history, "step": int(state["step"]), "stopped": stopped}
    if history:
        bounds = stage_boundaries(num_epochs, cc)
        out["plot"] = plot_series(
            os.path.join(workdir, "val_accuracy.png"),
            {MODE_TITLES[config.coconut_mode]: ([h["epoch"] + 1 for h in history], [h["accuracy"] for h in history])},
            "epoch", "validation accuracy", title=f"{MODE_TITLES[config.coconut_mode]}: validation accuracy",
            vlines=[b + 0.5 for b in bounds], vline_label="stage boundary",
        )
    if stopped:
        writer.close()
        return out
    # ------------------------------------------------------------------ test
    best_dir = os.path.join(workdir, "best_model")
    if best_final < 0:  # no validation at the final stage: use the last params
        save_model(best_dir, jax.device_get(state["params"]), mcfg, tok_dir)
    from latent_jax.train.checkpoint import load_any

    _, best = load_any(best_dir)
    best = jax.device_put(best, param_shardings(best, mesh))
    res = evaluate(trainer, best, test_data, test_stage, tok, settings, int(config.seed),
                   os.path.join(workdir, "test"), desc="test", progress=progress, geom=eval_geom(test_stage))
    writer.write(int(state["step"]), {"accuracy": res["accuracy"], "mean_new_tokens": res["mean_new_tokens"]},
                 prefix="test/")
    if "probe" in res:
        res["probe"]["plot"] = plot_probe(os.path.join(workdir, "thought_probe.png"), res["probe"])
        print(format_probe(res["probe"]), flush=True)
    writer.close()
    print(f"[{config.coconut_mode}] test accuracy {100 * res['accuracy']:.1f}% "
          f"({res['num_examples']} examples, {res['mean_new_tokens']:.1f} new tokens)", flush=True)
    out["test"] = res
    return out
