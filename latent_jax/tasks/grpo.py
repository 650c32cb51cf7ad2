"""The `grpo` workflow: GRPO on answers for Coconut-format tasks (plain CoT / no-CoT decoders
and Coconut models), `run(config, workdir)`.

    workdir/
      sft/                 the short supervised run the policy starts from (rl.init = "sft"),
                           an ordinary `coconut` workflow run (its best_model is the start)
      checkpoints/         TrainCheckpointer: params, optimizer state and step; the data order
                           and the rollout randomness are functions of (seed, step), so a
                           restarted run continues exactly
      metrics.jsonl, tb/   per step: train/reward, accuracy, length, penalty, kl,
                           clip_fraction, loss, zero_std_groups, rollout_s, update_s;
                           heldout/accuracy and heldout/length every rl.eval_every steps
      grpo.png             reward, accuracy and length over steps
      results.json         held-out accuracy and length before and after, timings

Each step takes rl.prompts_per_step training prompts (the curriculum's generation prompts at
the evaluated stage: the question for CoT, question + thoughts for Coconut), samples
rl.group_size completions per prompt (latent_jax.rl.rollout), scores them with the task's
own scorer and the optional length penalty (latent_jax.rl.rewards), and takes
rl.num_iterations optimizer updates of the GRPO objective (latent_jax.rl.grpo). Held-out
accuracy is greedy (temperature 0) on the test split, as the coconut workflow scores it.
"""

from __future__ import annotations

import copy
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from latent_jax.data.pipeline import CoconutEvalData, eval_geometry, load_split, repad
from latent_jax.latent.curriculum import problem_format, scheduled_stage
from latent_jax.models.hf_vlm import save_vlm_checkpoint
from latent_jax.models.io import save_model
from latent_jax.parallel import to_host
from latent_jax.rl.grpo import check_aggregation, check_scale, group_advantages, grpo_objective
from latent_jax.rl.rewards import TASKS, answer_rewards, check_shape
from latent_jax.rl.rollout import (
    completion_logprobs,
    completion_logprobs_jit,
    left_padded,
    rollout,
    sequence_arrays,
)
from latent_jax.tasks import coconut, coconut_mm
from latent_jax.tasks.coconut import (
    build_model,
    build_tokenizer,
    curriculum_config,
    generation_settings,
    prepare_data,
)
from latent_jax.tasks.coconut_mm import FeatureCache, MMEmbeds, ensure_smoke_fixtures, load_items, tokenize_items
from latent_jax.train.metrics import read_metrics
from latent_jax.train.trainer import Batch, IndexedBatches, Task, Trainer, check_mode, quiet_logs, write_json

INITS = ("sft", "model")


# ----------------------------------------------------------------------------- config
def rl_settings(config: ConfigDict) -> dict:
    """The checked rl.* settings as a plain dict (one-line errors naming the key)."""
    r = config.rl
    s = dict(
        task=str(r.get("task", "prosqa")), init=str(r.get("init", "sft")), group_size=int(r.group_size),
        prompts_per_step=int(r.prompts_per_step), steps=int(r.steps), temperature=float(r.temperature),
        top_p=float(r.get("top_p", 1.0)), beta=float(r.get("beta", 0.0)), eps_low=float(r.get("eps_low", 0.2)),
        eps_high=float(r.get("eps_high", r.get("eps_low", 0.2))),
        aggregation=check_aggregation(str(r.get("aggregation", "sequence"))),
        scale_rewards=check_scale(str(r.get("scale_rewards", "group"))),
        num_iterations=int(r.get("num_iterations", 1)), format_weight=float(r.get("format_weight", 0.0)),
        strict_format=bool(r.get("strict_format", True)),
        eval_every=int(r.get("eval_every", 10)), checkpoint_every=int(r.get("checkpoint_every", 0)),
        max_eval_rows=int(r.get("max_eval_rows", 0)),
    )
    lp = r.get("length_penalty", None)
    s["penalty"] = None
    if lp is not None and bool(lp.get("enabled", False)):
        s["penalty"] = dict(threshold=float(lp.threshold), factor=float(lp.factor), shape=check_shape(str(lp.shape)),
                            preserve_accuracy=bool(lp.get("preserve_accuracy", False)),
                            correct_only=bool(lp.get("correct_only", False)),
                            max_fraction=float(lp.get("max_fraction", 0.5)))
        if s["penalty"]["correct_only"] and not 0.0 <= s["penalty"]["max_fraction"] < 1.0:
            raise ValueError(f"config.rl.length_penalty.max_fraction={s['penalty']['max_fraction']}; use 0 <= "
                             "max_fraction < 1 (a correct answer must keep more reward than a wrong one)")
    if s["init"] not in INITS:
        raise ValueError(f"config.rl.init={s['init']!r}; use 'sft' (a short supervised run first) or 'model' "
                         "(start from config.load_model_path)")
    if s["task"] not in TASKS:
        raise ValueError(f"config.rl.task={s['task']!r}; use one of {', '.join(TASKS)}")
    dataset = config.get("data", {}).get("dataset", "")
    if dataset and not s["task"].startswith(dataset):
        raise ValueError(f"config.rl.task={s['task']!r} does not score data.dataset={dataset!r}; use rl.task="
                         f"{'cinepile' if dataset == 'cinepile' else 'aokvqa_mc or aokvqa_da'}")
    for k in ("group_size", "prompts_per_step", "num_iterations"):
        if s[k] < 1:
            raise ValueError(f"config.rl.{k}={s[k]}; use >= 1")
    if s["temperature"] <= 0:
        raise ValueError(f"config.rl.temperature={s['temperature']}; GRPO samples its groups, use a temperature > 0")
    return s


# ----------------------------------------------------------------------------- start point
def sft_config(config: ConfigDict, workdir: str) -> ConfigDict:
    """The supervised run the policy starts from: the same task and model with the
    config.rl.sft overrides (fewer epochs or rows: an under-trained start), data shared."""
    sub = copy.deepcopy(config)
    with sub.unlocked():
        sub.workflow = "coconut"
        sub.chain = ""
        sub.mode = "train"
        if is_multimodal(config):
            sub.workflow = "multimodal_coconut"
            sub.fixtures_dir = config.get("fixtures_dir", "") or os.path.join(workdir, "fixtures")
        sub.update(config.rl.get("sft") or {})  # nested keys merged key by key
        if config.data.get("generate", ""):
            sub.data.generate_dir = config.data.get("generate_dir", "") or os.path.join(workdir, "data")
    return sub


def start_model(config: ConfigDict, workdir: str) -> str:
    """The model directory the policy starts from: config.load_model_path (rl.init = "model"),
    or workdir/sft/best_model, trained first when missing (rl.init = "sft")."""
    if str(config.rl.get("init", "sft")) == "model":
        path = config.get("load_model_path", "")
        if not path:
            raise ValueError("config.rl.init='model' needs config.load_model_path (a coconut run's best_model); "
                             "or set rl.init='sft'")
        return path
    best = os.path.join(workdir, "sft", "best_model")
    if not os.path.isdir(best):
        run_single = coconut_mm.run_single if is_multimodal(config) else coconut.run_single
        print(f"== supervised start -> {os.path.join(workdir, 'sft')}", flush=True)
        run_single(sft_config(config, workdir), os.path.join(workdir, "sft"))
    return best


def is_multimodal(config: ConfigDict) -> bool:
    """Whether `config` is a multimodal Coconut config (CinePile video / A-OKVQA images)."""
    return bool(config.get("data", {}).get("dataset", ""))


# ----------------------------------------------------------------------------- prompts
class PromptSet:
    """A split's generation prompts as fixed-shape batches (one compiled program): arrays
    re-padded to one geometry, each row's reference (the gold answer text, or the data row for
    `refs`), and which rows are real. With `embeds` (an EmbeddingSource of the multimodal
    task, `split` its split name) each batch's image / video features are built on demand.
    A training set holds this process's rows of each batch; an evaluation set (split val or
    test) every row on every process (train/trainer.py)."""

    def __init__(self, examples, cc, ids, pad_id: int, batch_size: int, stage: int, geom, bucket: int,
                 refs: list | None = None, embeds=None, split: str = "train"):
        one = {} if split == "train" else {"process_index": 0, "process_count": 1}
        ds = CoconutEvalData(examples, cc, ids, pad_id, batch_size, bucket=bucket, **one).dataset(stage)
        self.batches, self.example_idx = [], []
        for i in range(len(ds)):
            eb = ds[i]
            a = repad({k: eb.arrays[k] for k in ("input_ids", "attention_mask", "latent_mask")}, eb.latent_start,
                      geom.start, geom.T, pad_id)
            idx = np.asarray(eb.example_idx)
            r = list(eb.answers) if refs is None else [refs[j] if j >= 0 else None for j in idx]
            self.batches.append((a, r, idx >= 0))
            self.example_idx.append(idx)
        self.latent_start, self.num_latent, self.feedback = geom.start, geom.num_latent, cc.feedback
        self.embeds, self.split = embeds, split

    def extras(self, i: int) -> dict:
        """rollout keyword arguments of batch i: embeds_override(_mask) for multimodal prompts."""
        if self.embeds is None:
            return {}
        e = self.embeds.arrays(self.batches[i][0]["input_ids"], self.example_idx[i], self.split)
        return {"embeds_override": e["embeds_override"], "embeds_override_mask": e["embeds_override_mask"]}

    def full_batches(self) -> list[int]:
        """Indices of batches without dummy rows (training draws only these)."""
        return [i for i, (_, _, real) in enumerate(self.batches) if real.all()]


def batch_for_step(step: int, full: list[int], seed: int) -> int:
    """The training batch of `step`: a fresh permutation of the full batches per pass, a pure
    function of (seed, step) so that a resumed run draws the same batches."""
    n = len(full)
    epoch, k = divmod(int(step), n)
    return full[int(np.random.default_rng((int(seed), epoch, 7)).permutation(n)[k])]


def rollout_width(ps: PromptSet) -> int:
    """The prompt width of this set's rollouts: plain prompts are cut after their last real
    column (`left_padded`), Coconut prompts keep the whole geometry."""
    a = ps.batches[0][0]
    if ps.num_latent == 0 and ps.embeds is None:
        cut = left_padded(a)
        if cut is not None:
            return int(cut["input_ids"].shape[1])
    return int(a["input_ids"].shape[1])


# ----------------------------------------------------------------------------- the run
def _texts(tok, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
    out = []
    for t, n in zip(tokens, lengths):
        ids = t[: int(n)].tolist()
        if ids and ids[-1] == tok.eos_id:
            ids = ids[:-1]
        out.append(tok.decode(ids, skip_special_tokens=True))
    return out


def _plot(path: str, steps_hist: list[dict], evals: list[dict], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    x = [h["step"] for h in steps_hist]
    ax[0].plot(x, [h["reward"] for h in steps_hist], lw=1, label="train reward (mean)")
    ax[0].set_title("reward")
    ax[1].plot(x, [h["accuracy"] for h in steps_hist], lw=1, alpha=0.6, label="train (sampled)")
    ax[1].plot([e["step"] for e in evals], [e["accuracy"] for e in evals], "o-", label="held-out (greedy)")
    ax[1].set_title("accuracy")
    ax[2].plot(x, [h["length"] for h in steps_hist], lw=1, alpha=0.6, label="train (sampled)")
    ax[2].plot([e["step"] for e in evals], [e["length"] for e in evals], "o-", label="held-out (greedy)")
    ax[2].set_title("generated tokens (mean)")
    for a in ax:
        a.set_xlabel("GRPO step")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class GRPOTrainer(Trainer):
    """The one Trainer, with a rollout before each update: a training Batch holds prompts; this
    samples the groups with the current params, scores them and hands the completions to the
    Trainer's compiled step (rl.num_iterations updates per rollout)."""

    def train_step(self, state: dict, batch: Batch) -> tuple[dict, dict]:
        task: GRPOTask = self.task  # type: ignore[assignment]
        t0 = time.time()
        step_batch, info = task.rollout_batch(state["params"], batch)
        t1 = time.time()
        m: dict = {}
        for _ in range(task.s["num_iterations"]):
            state, m = super().train_step(state, step_batch)
        m = {k: float(v) for k, v in m.items()}
        info.update(rollout_s=t1 - t0, update_s=time.time() - t1)
        return state, {**m, **info}


class GRPOTask(Task):
    """GRPO on Coconut-format answers (module docstring). An "epoch" is rl.eval_every steps:
    the Trainer evaluates, checkpoints and keeps the best model by validation accuracy after
    each one; config.num_epochs is derived from rl.steps."""

    best_metric = "accuracy"

    def __init__(self, config: ConfigDict, workdir: str, s: dict, mcfg, tok, cc, train_set: PromptSet,
                 val_set: PromptSet, test_set: PromptSet, export_fn, start: str, start_eval: dict):
        self.config, self.workdir, self.s, self.mcfg, self.tok, self.cc = config, workdir, s, mcfg, tok, cc
        self.train_set, self.val_set, self.test_set = train_set, val_set, test_set
        self.export_fn, self.start, self.start_eval = export_fn, start, start_eval
        self.name = "grpo"
        self.mode = str(config.coconut_mode)
        self.delimiter = problem_format(str(config.data.get("format", "text"))).answer_delimiter
        self.max_new = generation_settings(config)[0]["max_new_tokens"]  # text: per mode; multimodal: config.eval
        self.scorer = str(config.get("eval", {}).get("scorer", "official")) if s["task"] != "prosqa" else "official"
        self.thought_norm = str(config.get("thought_norm", "none"))
        self.gen = dict(config=mcfg, max_new_tokens=self.max_new, stop_ids=(tok.eos_id,), pad_id=tok.pad_id,
                        feedback=train_set.feedback, thought_norm=self.thought_norm)
        self.full = train_set.full_batches()
        self.P = rollout_width(train_set)
        self.ref = None  # the frozen start params for the KL term (set by run when beta > 0)
        self.rng = jax.random.PRNGKey(int(config.seed) + 1)

    # ---------------------------------------------------------------- rollouts
    def rewards(self, ro, golds, strict: bool | None = None) -> dict:
        """Rewards of a rollout; `strict` (default rl.strict_format): no correctness reward
        without the answer delimiter. The held-out evaluation passes strict=False (the task's
        evaluation reads an undelimited completion as its whole text)."""
        s = self.s
        return answer_rewards(_texts(self.tok, ro.tokens, ro.lengths), golds, ro.lengths, task=s["task"],
                              delimiter=self.delimiter, scorer=self.scorer, format_weight=s["format_weight"],
                              penalty=s["penalty"], strict=s["strict_format"] if strict is None else strict)

    def rollout_batch(self, params, batch: Batch) -> tuple[Batch, dict]:
        s, G, ts = self.s, self.s["group_size"], self.train_set
        step = int(batch.arrays["step"])
        i = int(batch.arrays["index"])
        a, answers, _ = ts.batches[i]
        ro = rollout(params, a, ts.latent_start, ts.num_latent, jax.random.fold_in(self.rng, step), group_size=G,
                     temperature=s["temperature"], top_p=s["top_p"], **self.gen, **ts.extras(i))
        r = self.rewards(ro, [x for x in answers for _ in range(G)])
        arrays = sequence_arrays(ro)
        arrays["advantages"] = np.asarray(group_advantages(jnp.asarray(r["reward"]), G, s["scale_rewards"]))
        static = self.static_key()
        jb = {k: jnp.asarray(v) for k, v in arrays.items()}
        kw = dict(config=self.mcfg, latent_start=ts.latent_start, num_latent=ts.num_latent, prompt_len=self.P,
                  feedback=ts.feedback, thought_norm=self.thought_norm)
        temp = jnp.float32(s["temperature"])
        if s["num_iterations"] > 1:  # the ratio is taken against the policy that sampled
            arrays["old_logp"] = to_host(completion_logprobs_jit(params, jb, temp, **kw))
        if self.ref is not None:
            arrays["ref_logp"] = to_host(completion_logprobs_jit(self.ref, jb, temp, **kw))
        info = {"reward": float(r["reward"].mean()), "accuracy": float(r["accuracy"].mean()),
                "length": float(ro.lengths.mean()), "penalty": float(r["penalty"].mean()),
                "zero_std_groups": float(np.mean(np.std(r["reward"].reshape(-1, G), axis=1) == 0))}
        return Batch(static, arrays), info

    def static_key(self):
        ts = self.train_set
        return (self.P, ts.latent_start, ts.num_latent, ts.feedback, self.s["num_iterations"] > 1, self.ref is not None)

    # ---------------------------------------------------------------- Trainer hooks
    def compile_key(self):
        s = self.s
        return ("grpo", self.mcfg, self.thought_norm, s["temperature"], s["eps_low"], s["eps_high"], s["beta"],
                s["aggregation"], self.max_new)

    def loss_fn(self, params, batch, static):
        P, start, num_latent, feedback, has_old, _ = static
        s = self.s
        lp = completion_logprobs(params, batch, config=self.mcfg, latent_start=start, num_latent=num_latent,
                                 prompt_len=P, temperature=s["temperature"], feedback=feedback,
                                 thought_norm=self.thought_norm)
        old = batch["old_logp"] if has_old else jax.lax.stop_gradient(lp)
        return grpo_objective(lp, old, batch["advantages"], batch["completion_mask"], batch.get("ref_logp"),
                              eps_low=s["eps_low"], eps_high=s["eps_high"], beta=s["beta"],
                              aggregation=s["aggregation"], max_len=self.max_new)

    def steps_per_epoch(self) -> int:
        return max(1, self.s["eval_every"])

    def train_batches(self, epoch: int, data_state: dict | None):
        n = self.steps_per_epoch()
        seed = int(self.config.seed)

        def make(i: int) -> Batch:
            step = epoch * n + i
            # a prompt batch: which training batch and the step (the rollout's randomness)
            return Batch("prompts", {"index": np.int32(batch_for_step(step, self.full, seed)),
                                     "step": np.int32(step)})

        return IndexedBatches(n, make, data_state)

    def evaluate(self, trainer, params, epoch: int) -> tuple[dict, float]:
        val = heldout(self, params, self.val_set)
        test = heldout(self, params, self.test_set)
        m = {"accuracy": val["accuracy"], "length": val["length"], "test_accuracy": test["accuracy"],
             "test_length": test["length"]}
        return m, val["accuracy"]

    def export(self, trainer, params) -> None:
        self.export_fn(os.path.join(self.workdir, "best_model"), params)  # Orbax saves each process's shards

    def finish(self, trainer, state, out: dict) -> dict:
        self.export_fn(os.path.join(self.workdir, "final_model"), state["params"])
        rows = read_metrics(os.path.join(self.workdir, "metrics.jsonl"))
        train = [{"step": r["step"], "reward": r["train/reward"], "accuracy": r["train/accuracy"],
                  "length": r["train/length"], "rollout_s": r.get("train/rollout_s", 0.0),
                  "update_s": r.get("train/update_s", 0.0)} for r in rows if "train/reward" in r]
        evals = [{"step": 0, "accuracy": self.start_eval["test_accuracy"], "length": self.start_eval["test_length"]}]
        evals += [{"step": r["step"], "accuracy": r["val/test_accuracy"], "length": r["val/test_length"]}
                  for r in rows if "val/test_accuracy" in r]
        s, G = self.s, self.s["group_size"]
        plot = _plot(os.path.join(self.workdir, "grpo.png"), train, evals,
                     f"GRPO on {s['task']} ({self.mode}, G={G}, {s['prompts_per_step']} prompts/step)")
        roll, upd = sum(h["rollout_s"] for h in train), sum(h["update_s"] for h in train)
        res = {
            "start_model": self.start,
            "heldout_before": {"accuracy": self.start_eval["test_accuracy"], "length": self.start_eval["test_length"],
                               "val_accuracy": self.start_eval["accuracy"]},
            "heldout_after": {"accuracy": evals[-1]["accuracy"], "length": evals[-1]["length"]},
            "heldout_split": "test",
            "evals": evals,
            "steps": int(state["step"]),
            "group_size": G,
            "prompts_per_step": s["prompts_per_step"],
            "length_penalty": s["penalty"],
            "aggregation": s["aggregation"],
            "coconut_mode": self.mode,
            "num_thoughts": int(self.train_set.num_latent),  # continuous thoughts in the policy's prompts
            "rollout_share": roll / max(roll + upd, 1e-9),
            "plot": plot,
            **out,
        }
        write_json(os.path.join(self.workdir, "results.json"), res)
        b, a = res["heldout_before"], res["heldout_after"]
        print(f"[grpo] held-out (test) accuracy {100 * b['accuracy']:.1f}% -> {100 * a['accuracy']:.1f}%, "
              f"generated tokens {b['length']:.2f} -> {a['length']:.2f}", flush=True)
        return res


def heldout(task: GRPOTask, params, ps: PromptSet) -> dict:
    """Greedy accuracy and mean generated tokens on a prompt set (task's scorer)."""
    acc, lens = [], []
    for i, (a, answers, real) in enumerate(ps.batches):
        ro = rollout(params, a, ps.latent_start, ps.num_latent, jax.random.PRNGKey(0), group_size=1, temperature=0.0,
                     **task.gen, **ps.extras(i))
        r = task.rewards(ro, answers, strict=False)  # the evaluation's own reading
        acc += r["accuracy"][real].tolist()
        lens += ro.lengths[real].tolist()
    return {"accuracy": float(np.mean(acc)), "length": float(np.mean(lens)), "n": len(acc)}


def _text_setup(cfg: ConfigDict, workdir: str, s: dict):
    """Coconut-format text: (model config, params, tokenizer, curriculum, train / val / test
    PromptSets, export function)."""
    paths = prepare_data(cfg, workdir)
    tok, tok_dir = build_tokenizer(cfg, workdir, paths["train"])
    mcfg, params = build_model(cfg, tok)
    cc = curriculum_config(cfg)
    fmt = problem_format(str(cfg.data.get("format", "text")))
    bucket = int(cfg.data.get("bucket", 16))
    stage = int(cfg.get("eval_stage", -1))
    stage = scheduled_stage(max(0, int(s["sft_epochs"]) - 1), cc) if stage < 0 else stage
    bad = str(cfg.get("on_bad_row", "error"))

    def load(path, max_rows):
        return load_split(path, tok, cc, fmt=fmt, on_bad_row=bad, max_rows=max_rows or None)

    exs = {"train": load(paths["train"], cfg.data.get("max_train_rows", 0)),
           "val": load(paths["valid"], s["max_eval_rows"]), "test": load(paths["test"], s["max_eval_rows"])}
    geom = eval_geometry([e for v in exs.values() for e in v], stage, cc, tok.latent_ids, bucket)
    ebs = int(cfg.get("eval_batch_size", 64))
    sets = [PromptSet(exs[k], cc, tok.latent_ids, tok.pad_id, s["prompts_per_step"] if k == "train" else ebs, stage,
                      geom, bucket, split=k) for k in ("train", "val", "test")]
    return mcfg, params, tok, cc, sets, lambda path, p: save_model(path, p, mcfg, tok_dir)


def _mm_setup(cfg: ConfigDict, workdir: str, s: dict):
    """CinePile (video) / A-OKVQA (images): the language model of the VLM is the policy, the
    frozen vision features enter the prompts as embeds_override (tasks.coconut_mm pieces)."""
    if cfg.get("smoke"):
        ensure_smoke_fixtures(cfg, workdir)
    vcfg, vparams, unused, tok, ids = coconut_mm.load_model(cfg)
    tok_dir, lm = coconut_mm.tokenizer_dir(cfg), vparams["language_model"]
    feats = FeatureCache(vcfg, vparams, cfg)
    d = cfg.data
    train_items, _ = load_items(cfg, d.train_split)
    eval_items, _ = load_items(cfg, d.eval_split)
    if d.get("max_train"):
        train_items = train_items[: int(d.max_train)]
    if d.get("max_eval"):
        eval_items = eval_items[: int(d.max_eval)]
    hold = int(d.get("val_holdout", 0) or 0)
    items = {"train": train_items[hold:], "val": train_items[:hold] if hold else eval_items, "test": eval_items}
    tokd = {k: tokenize_items(v, tok, feats, vcfg.image_token_id) for k, v in items.items()}
    embeds = MMEmbeds({k: f for k, (_, f) in tokd.items()}, vcfg.image_token_id, vcfg.text.hidden_size)
    cc = curriculum_config(cfg)
    stage = int(cfg.eval.get("stage", -1))
    stage = scheduled_stage(max(0, int(s["sft_epochs"]) - 1), cc) if stage < 0 else stage
    bucket = int(d.get("bucket", 16))
    geom = eval_geometry([e for v in tokd.values() for e in v[0]], stage, cc, ids, bucket)
    bs = int(cfg.batch_size)
    sets = [PromptSet(tokd[k][0], cc, ids, tok.pad_id, s["prompts_per_step"] if k == "train" else bs, stage, geom,
                      bucket, refs=[it.row for it in items[k]], embeds=embeds, split=k) for k in ("train", "val", "test")]

    def export(path, p):
        save_vlm_checkpoint(path, dict(vparams, language_model=p), vcfg, unused, tokenizer_dir=tok_dir)

    return vcfg.text, lm, tok, cc, sets, export


def run(config: ConfigDict, workdir: str) -> dict:
    """GRPO from a supervised start (module docstring); returns results.json's dict."""
    quiet_logs(config)
    check_mode(config)
    s = rl_settings(config)
    # the curriculum stage the start model was trained to (the policy's prompts are at it)
    sft = config.rl.get("sft", {}) if s["init"] == "sft" else {}
    s["sft_epochs"] = int(sft.get("num_epochs", config.num_epochs))
    os.makedirs(workdir, exist_ok=True)
    t_wall, t_cpu = time.time(), time.process_time()
    start = start_model(config, workdir)

    cfg = copy.deepcopy(config)
    with cfg.unlocked():
        cfg.load_model_path = start
        if config.data.get("generate", ""):
            cfg.data.generate_dir = config.data.get("generate_dir", "") or os.path.join(workdir, "data")
        if is_multimodal(config):
            cfg.fixtures_dir = config.get("fixtures_dir", "") or os.path.join(workdir, "fixtures")
        # one Trainer "epoch" per evaluation: rl.steps updates in rl.steps / rl.eval_every epochs
        cfg.num_epochs = -(-s["steps"] // max(1, s["eval_every"]))
        cfg.eval_every_epochs = 1
        cfg.log_every = 1
        cfg.max_steps = 0
        setup = _mm_setup if is_multimodal(config) else _text_setup
        mcfg, params, tok, cc, (train_set, val_set, test_set), export = setup(cfg, workdir, s)
    if not train_set.full_batches():
        raise ValueError(f"the training split has fewer than rl.prompts_per_step={s['prompts_per_step']} prompts; "
                         "lower rl.prompts_per_step")

    start_path = os.path.join(workdir, "start_eval.json")
    task = GRPOTask(cfg, workdir, s, mcfg, tok, cc, train_set, val_set, test_set, export, start, {})
    if os.path.exists(start_path):
        with open(start_path) as f:
            task.start_eval = json.load(f)
    else:
        val, test = heldout(task, params, val_set), heldout(task, params, test_set)
        task.start_eval = {"accuracy": val["accuracy"], "length": val["length"], "test_accuracy": test["accuracy"],
                           "test_length": test["length"]}
        write_json(start_path, task.start_eval)
    print(f"[grpo] start ({start}): held-out (test) accuracy {100 * task.start_eval['test_accuracy']:.1f}%, "
          f"{task.start_eval['test_length']:.2f} tokens", flush=True)
    if config.mode == "eval":
        return {"heldout": task.start_eval, "model": start}
    if s["beta"] > 0:
        task.ref = params  # the frozen start model
    trainer = GRPOTrainer(cfg, task, workdir)
    state = trainer.init_state(params, s["steps"] * s["num_iterations"])
    res = trainer.fit(state)
    res["wall_time_s"] = time.time() - t_wall
    res["cpu_time_s"] = time.process_time() - t_cpu
    write_json(os.path.join(workdir, "results.json"), res)
    print(f"[grpo] {res.get('steps')} steps, {res['wall_time_s']:.0f}s wall, {res['cpu_time_s']:.0f}s CPU", flush=True)
    return res
