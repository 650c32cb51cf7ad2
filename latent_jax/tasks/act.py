"""The 'act' workflow: a recursive-halting (ACT) decoder trained as a task of the one Trainer.

Tasks (config.task):
    digits  scikit-learn's 8x8 digits, classified by predicting the label token after the image
    mnist   MNIST 28x28 from a locally prepared tensorflow-datasets directory (config.data.data_dir)
    text    next-token LM on a local text / token file (config.data.path)

Training uses the lax.scan recursion (remat per step); evaluation uses the early-halting
lax.while_loop. The training budget is config.num_epochs epochs or, when set,
config.train_steps steps (then evaluated); config.max_steps interrupts a run (resumable) as
in every workflow. Batch i of an epoch is a function of (seed, epoch, i), so a resumed run
repeats an uninterrupted one. Writes workdir/metrics.jsonl (+ TensorBoard),
workdir/act_training.png (accuracy and expected steps over training), workdir/results.json
and Orbax training checkpoints (best by eval accuracy + latest) under workdir/checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from latent_jax.data import text_tokens as tt
from latent_jax.data.augment import AugmentConfig, affine_augment, dataset_multiplicity
from latent_jax.data.digits import load_digits_splits
from latent_jax.data.mnist import load_mnist
from latent_jax.latent.act import ACTConfig, act_apply, act_loss, init_params
from latent_jax.models import vision_tokens as vt
from latent_jax.models.config import ModelConfig
from latent_jax.parallel import to_host
from latent_jax.tasks.common import load_model, model_config_from
from latent_jax.train.metrics import MetricsWriter, plot_series
from latent_jax.train.trainer import Batch, IndexedBatches, Task, Trainer, check_mode, quiet_logs, write_json

TASKS = ("digits", "mnist", "text")


# --------------------------------------------------------------------------- building
def _load_or_init(config: ConfigDict, acfg: ACTConfig, vocab_size: int, rng, **extra) -> tuple[ModelConfig, dict]:
    """(model config, {'decoder', 'act'} params): from config.model.path when set, else random."""
    if config.model.path:
        mcfg, dec = load_model(config)
        if mcfg.vocab_size < vocab_size:
            raise ValueError(f"model at {config.model.path} has vocab_size={mcfg.vocab_size} < {vocab_size} needed "
                             "by this task; use a model with a larger vocabulary or train from scratch (model.path='')")
        return mcfg, init_params(mcfg, acfg, rng, decoder_params=dec)
    mcfg = model_config_from(config.model, vocab_size, **extra)
    return mcfg, init_params(mcfg, acfg, rng)


def _count(params) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def padded_batches(arrays: dict, bs: int) -> list[dict]:
    """`arrays` (rows first) in batches of `bs` rows, the last padded with zero rows; each
    batch's "valid" marks its real rows."""
    total = len(next(iter(arrays.values())))
    pad = -total % bs  # zero rows that fill the last batch
    full = {k: np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)]) for k, a in arrays.items()}
    full["valid"] = np.arange(total + pad) < total
    return [{k: a[s:s + bs] for k, a in full.items()} for s in range(0, total, bs)]


def _eval_sums(out, valid, correct, ce) -> dict:
    """An eval batch's row count n, its sums over the valid rows of the metrics (means once
    divided by n) and the halting loop's inner steps."""
    v = valid.astype(jnp.float32)
    return {"n": jnp.sum(v), "accuracy": jnp.sum(correct * v), "ce": jnp.sum(ce * v),
            "act_inner_steps": out.inner_steps.astype(jnp.float32),
            "act_expected_steps": jnp.sum(jnp.mean(out.expected_steps, -1) * v),
            "act_mean_steps": jnp.sum(jnp.mean(out.n_steps.astype(jnp.float32), -1) * v),
            "act_label_steps": jnp.sum(out.n_steps[:, -1] * v)}


# ------------------------------------------------------------------------------ tasks
@dataclasses.dataclass
class _Task:
    mcfg: ModelConfig
    params: dict
    steps_per_epoch: int
    train_batch: Callable[[int, int, int], dict]  # (epoch, index in the epoch, total steps) -> batch
    eval_batches: Callable[[], list[dict]]
    loss_fn: Callable  # (params, batch) -> (loss, metrics)
    eval_fn: Callable  # (params, batch) -> dict of sums
    frozen: Callable[[str], bool] | None
    info: dict


def image_task(config: ConfigDict, acfg: ACTConfig, rng) -> _Task:
    d = config.data
    if config.task == "digits":
        train, test = load_digits_splits(d.test_fraction, seed=config.seed)
    else:
        train, test = load_mnist(d.data_dir)
    n, m = d.max_train or None, d.max_eval or None
    train = dataclasses.replace(train, images=train.images[:n], labels=train.labels[:n])
    test = dataclasses.replace(test, images=test.images[:m], labels=test.labels[:m])
    vcfg = vt.VisionTokenConfig.from_dict(config.vision)
    n_classes = vcfg.num_labels
    H, W = train.image_shape
    T = vcfg.num_tokens(H, W) + 1  # BOS + image; the label token is predicted after the last position
    r_model, r_enc = jax.random.split(rng)
    mcfg, params = _load_or_init(config, acfg, vt.vocab_size(n_classes), r_model, bos_token_id=vt.BOS_ID,
                                 pad_token_id=vt.PAD_ID, eos_token_id=(vt.EOS_ID,))
    params["encoder"] = vt.init_encoder_params(vcfg, mcfg.hidden_size, (H, W), r_enc)
    aug = AugmentConfig.from_dict(config.augment)
    bs = int(config.batch_size)
    if len(train) < bs:
        raise ValueError(f"batch_size={bs} is larger than the training set ({len(train)}); lower batch_size")
    mult = dataset_multiplicity(d.token_param_ratio, _count(params), len(train), T + 1, d.max_multiplicity)
    steps_per_epoch = (len(train) * mult) // bs
    ponder_all = config.ponder_on == "all"

    def train_batch(epoch: int, i: int, total: int) -> dict:
        order = np.concatenate([np.random.default_rng([config.seed, epoch, m]).permutation(len(train))
                                for m in range(mult)])
        idx = order[i * bs:(i + 1) * bs]
        imgs = train.images[idx]
        if aug.enabled:
            prob, deg, tr = aug.at(epoch * steps_per_epoch + i, total)
            imgs = affine_augment(imgs, np.random.default_rng([config.seed, epoch, i, 1]), prob, deg, tr)
        return {"images": imgs, "labels": train.labels[idx]}

    def eval_batches() -> list[dict]:
        return padded_batches({"images": test.images, "labels": test.labels}, bs)

    def loss_fn(params, batch):
        emb = vt.image_inputs(params, batch["images"], vcfg, mcfg)
        B = batch["labels"].shape[0]  # the label token is the one target, after the last position
        tgt = jnp.zeros((B, T), jnp.int32).at[:, -1].set(vt.label_token(batch["labels"]))
        mask = jnp.zeros((B, T), jnp.float32).at[:, -1].set(1.0)
        labels = tgt if acfg.lambda_deep_supervision else None
        out = act_apply(params, mcfg, acfg, inputs_embeds=emb, labels=labels, loop="scan")
        loss, m = act_loss(out, tgt, mask, acfg, None if not ponder_all else jnp.ones_like(mask), params=params,
                           model_config=mcfg)
        pred = jnp.argmax(vt.label_logits(out.logits[:, -1], n_classes), -1)
        m["accuracy"] = jnp.mean((pred == batch["labels"]).astype(jnp.float32))
        m["act_label_steps"] = jnp.mean(out.n_steps[:, -1].astype(jnp.float32))
        return loss, m

    def eval_fn(params, batch):
        emb = vt.image_inputs(params, batch["images"], vcfg, mcfg)
        out = act_apply(params, mcfg, acfg, inputs_embeds=emb, loop="while")
        lg = vt.label_logits(out.logits[:, -1], n_classes)
        ce = optax.softmax_cross_entropy_with_integer_labels(out.logits[:, -1], vt.label_token(batch["labels"]))
        return _eval_sums(out, batch["valid"], jnp.argmax(lg, -1) == batch["labels"], ce)

    frozen = (lambda p: p.startswith("encoder/")) if vcfg.freeze_encoder else None
    info = {"task": config.task, "train_examples": len(train), "test_examples": len(test),
            "tokens_per_example": T + 1, "multiplicity": mult, "encoder": vcfg.encoder}
    return _Task(mcfg, params, steps_per_epoch, train_batch, eval_batches, loss_fn, eval_fn, frozen, info)


def text_task(config: ConfigDict, acfg: ACTConfig, rng, workdir: str) -> _Task:
    d = config.data
    path = d.path or (tt.write_smoke_text(os.path.join(workdir, "smoke_corpus.txt")) if d.synthetic else "")
    if not path:
        raise FileNotFoundError("data.path is empty; set --config.data.path to a local .txt, .npy or .bin token file")
    tok_dir = d.tokenizer_dir or config.model.path
    tokens = tt.load_tokens(path, tok_dir)
    S = int(d.seq_len)
    train_w, eval_w = tt.split_windows(tt.lm_windows(tokens, S), d.eval_fraction, config.seed)
    eval_w = eval_w[: d.max_eval or None]
    vocab = int(tokens.max()) + 1 if tok_dir else tt.BYTE_VOCAB
    mcfg, params = _load_or_init(config, acfg, vocab, rng, bos_token_id=tt.BYTE_BOS, pad_token_id=tt.BYTE_PAD)
    if int(tokens.max()) >= mcfg.vocab_size:
        raise ValueError(f"{path} has token id {int(tokens.max())} >= vocab_size {mcfg.vocab_size}; "
                         "tokenize with the model's tokenizer (data.tokenizer_dir)")
    bs = int(config.batch_size)
    if len(train_w) < bs:
        raise ValueError(f"batch_size={bs} exceeds the {len(train_w)} training windows; lower batch_size or data.seq_len")
    steps_per_epoch = len(train_w) // bs

    def train_batch(epoch: int, i: int, total: int) -> dict:
        order = np.random.default_rng([config.seed, epoch]).permutation(len(train_w))
        return {"tokens": train_w[order[i * bs:(i + 1) * bs]]}

    def eval_batches() -> list[dict]:
        return padded_batches({"tokens": eval_w}, bs)

    def loss_fn(params, batch):
        x, y = batch["tokens"][:, :-1], batch["tokens"][:, 1:]
        out = act_apply(params, mcfg, acfg, x, labels=y if acfg.lambda_deep_supervision else None, loop="scan")
        mask = jnp.ones(y.shape, jnp.float32)
        loss, m = act_loss(out, y, mask, acfg, params=params, model_config=mcfg)
        m["accuracy"] = m["token_accuracy"]  # every position is labelled
        return loss, m

    def eval_fn(params, batch):
        x, y = batch["tokens"][:, :-1], batch["tokens"][:, 1:]
        out = act_apply(params, mcfg, acfg, x, loop="while")
        ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, y).mean(-1)
        return _eval_sums(out, batch["valid"], (jnp.argmax(out.logits, -1) == y).mean(-1), ce)

    info = {"task": "text", "data": path, "tokens": int(len(tokens)), "train_windows": int(len(train_w)),
            "eval_windows": int(len(eval_w)), "seq_len": S}
    return _Task(mcfg, params, steps_per_epoch, train_batch, eval_batches, loss_fn, eval_fn, None, info)


# ---------------------------------------------------------------------------- the task
class ACTTask(Task):
    """ACT for the Trainer: loss = act_loss over the lax.scan recursion; evaluation = the
    early-halting while_loop over the eval set; best metric = eval accuracy."""

    name = "act"

    def __init__(self, config: ConfigDict, workdir: str, acfg: ACTConfig, t: _Task):
        self.config, self.workdir, self.acfg, self.t = config, workdir, acfg, t
        self.total_steps = int(config.train_steps) or t.steps_per_epoch * int(config.num_epochs)
        self.num_epochs = math.ceil(self.total_steps / t.steps_per_epoch)
        self.eval_step, self.eval_batches = jax.jit(t.eval_fn), t.eval_batches()
        self.t_start = time.time()

    def compile_key(self):  # what loss_fn depends on besides shapes: equal keys share compiled steps
        c = self.config
        vision = c.vision.to_dict() if "vision" in c else {}
        return ("act", c.task, self.t.mcfg, self.acfg, json.dumps(vision, sort_keys=True),
                c.ponder_on, int(c.data.get("seq_len", 0)))

    def loss_fn(self, params, batch, static):
        return self.t.loss_fn(params, batch)

    def steps_per_epoch(self) -> int:
        return self.t.steps_per_epoch

    def train_batches(self, epoch, data_state):
        n = min(self.t.steps_per_epoch, self.total_steps - epoch * self.t.steps_per_epoch)
        return IndexedBatches(n, lambda i: Batch(None, self.t.train_batch(epoch, i, self.total_steps)), data_state)

    def evaluate(self, trainer, params, epoch):
        """Eval-set means of the halting while_loop's accuracy, CE and step counts (every process
        evaluates every row: the batches are whole on each, sharded over the mesh's batch axes)."""
        tot: dict[str, float] = {}
        inner = []
        for b in self.eval_batches:
            r = to_host(self.eval_step(params, trainer.place_all(b)))
            inner.append(float(r.pop("act_inner_steps")))
            for k, v in r.items():
                tot[k] = tot.get(k, 0.0) + float(v)
        n = max(tot.pop("n", 0.0), 1.0)
        res = {k: v / n for k, v in tot.items()}
        res["act_inner_steps"] = float(np.mean(inner))
        return res, res["accuracy"]

    def finish(self, trainer, state, out):
        rows = [h for h in out["history"] if "accuracy" in h]
        xs = [min((r["epoch"] + 1) * self.t.steps_per_epoch, self.total_steps) for r in rows]
        series = lambda key: (xs, [r[key] for r in rows])  # noqa: E731  (eval metric by step)
        title = f"ACT {self.t.info.get('task')} (k_max={self.acfg.k_max}, tau={self.acfg.tau})"
        png = plot_series(os.path.join(self.workdir, "act_training.png"), {"eval accuracy": series("accuracy")},
                          "step", "accuracy", title=title, secondary_label="recursion steps",
                          secondary={"expected steps": series("act_expected_steps"),
                                     "inner steps (while_loop)": series("act_inner_steps")}) if rows else None
        final = rows[-1] if rows else {}
        results = {"final": final, "best_accuracy": max((r["accuracy"] for r in rows), default=None),
                   "steps": out["step"], "wall_seconds": time.time() - self.t_start, "params": _count(state["params"]),
                   "info": self.t.info, "act": dataclasses.asdict(self.acfg), "plot": png, "history": out["history"]}
        write_json(os.path.join(self.workdir, "results.json"), results)
        print(f"act done: accuracy={final.get('accuracy')} steps={out['step']} wall={results['wall_seconds']:.1f}s "
              f"mean inner steps={final.get('act_inner_steps')} expected steps={final.get('act_expected_steps')}")
        return results


def run(config: ConfigDict, workdir: str) -> dict:
    """Train (config.mode == 'train') or evaluate the best checkpoint ('eval'); returns results."""
    if config.task not in TASKS:
        raise ValueError(f"config.task={config.task!r}; use one of {', '.join(TASKS)}")
    check_mode(config)
    quiet_logs(config)
    acfg = ACTConfig.from_dict(config.act)
    rng = jax.random.PRNGKey(config.seed)
    t = text_task(config, acfg, rng, workdir) if config.task == "text" else image_task(config, acfg, rng)
    if t.steps_per_epoch < 1:
        raise ValueError("no full training batch per epoch; lower batch_size")
    task = ACTTask(config, workdir, acfg, t)
    trainer = Trainer(config, task, workdir)
    state = trainer.init_state(t.params, task.total_steps, frozen=t.frozen)
    print(f"act: {t.info} params={_count(t.params):,} steps/epoch={t.steps_per_epoch} total_steps={task.total_steps} "
          f"k_max={acfg.k_max} tau={acfg.tau}")
    if config.mode == "train":
        return trainer.fit(state, task.num_epochs)
    state = trainer.restore_best(state)
    res, _ = task.evaluate(trainer, state["params"], 0)
    writer = MetricsWriter(workdir, config.wandb_project, config=config.to_dict())
    writer.write(int(state["step"]), res, prefix="eval/")
    writer.close()
    res.update(step=int(state["step"]))
    write_json(os.path.join(workdir, "eval_results.json"), res)
    print(f"eval: {res}")
    return res
