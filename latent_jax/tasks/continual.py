"""Continual learning workflow: datasets trained one after another on the one Trainer, the
accuracy matrix after every dataset, and the plasticity demonstration of Dohare et al. 2024
(a long sequence of permuted digit tasks; plain backprop's accuracy on new tasks decays,
continual backprop's does not).

    python -m latent_jax.main --config=configs/continual_digits.py --workdir runs/continual_digits
    python -m latent_jax.main --config=configs/continual_digits.py:smoke --workdir /tmp/cl_smoke

`SequentialTask` sequences any Tasks that train the same params (Trainer epoch e trains
dataset e // epochs_per_dataset); after the last epoch on dataset i the model is evaluated on
datasets 0..i+1 (+1: forward transfer) with each task's own evaluator, giving row i of the
accuracy matrix R. results.json holds R, the new-task curve (R[i, i]), the average accuracy,
forgetting (Chaudhry et al. 2018), backward and forward transfer (Lopez-Paz & Ranzato 2017)
and accuracy_matrix.png.

config.continual (configs/base.py) switches continual backprop, L2 and shrink-and-perturb;
config.compare (e.g. "bp,cbp,l2,snp") runs each variant in workdir/<variant>/ and draws
their new-task curves in one plasticity.png.
"""

from __future__ import annotations

import copy
import math
import os
import time
from typing import Any, Hashable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from latent_jax.data.digits import load_digits_splits
from latent_jax.data.mnist import load_mnist
from latent_jax.data.permuted import FlatTask, permuted_task
from latent_jax.train import continual as C
from latent_jax.train.trainer import Batch, IndexedBatches, MappedBatches, Task, Trainer, quiet_logs, write_json

VARIANTS = ("bp", "cbp", "l2", "snp")
VARIANT_TITLES = {"bp": "backprop", "cbp": "continual backprop", "l2": "L2", "snp": "shrink & perturb"}


# ============================================================================ model and one task
class MLPClassifier(nn.Module):
    """x -> [Dense(width) -> ReLU] x depth -> Dense(classes); returns (logits, {layer: hidden})."""

    widths: tuple[int, ...]
    classes: int

    @property
    def names(self) -> list[str]:
        return [f"hidden_{i}" for i in range(len(self.widths))] + ["out"]

    @nn.compact
    def __call__(self, x):
        hs = {}
        init = nn.initializers.variance_scaling(2.0, "fan_in", "uniform")  # kaiming uniform, as the paper
        for i, w in enumerate(self.widths):
            x = nn.relu(nn.Dense(w, kernel_init=init, name=f"hidden_{i}")(x))
            hs[f"hidden_{i}"] = x
        return nn.Dense(self.classes, kernel_init=init, name="out")(x), hs


_EVAL_CACHE: dict[Hashable, Any] = {}


class ImageTask(Task):
    """Classify one FlatTask with an MLPClassifier: `passes` shuffled passes over its train
    split per Trainer epoch, accuracy on its test split."""

    best_metric = "accuracy"

    def __init__(self, data: FlatTask, model: MLPClassifier, batch_size: int, passes: int = 1, seed: int = 0):
        self.data, self.model, self.batch_size, self.passes, self.seed = data, model, int(batch_size), int(passes), seed
        self.name = data.name
        if len(data.y_train) < self.batch_size:
            raise ValueError(f"{data.name}: {len(data.y_train)} train rows < batch_size {batch_size}; lower batch_size")

    def compile_key(self) -> Hashable:
        return ("image_mlp", self.model.widths, self.model.classes)

    def continual_layers(self, params) -> list[C.HiddenLayer]:
        return C.dense_chain(params, self.model.names)

    def loss_fn(self, params, batch, static):
        logits, hs = self.model.apply({"params": params}, batch["x"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        acc = jnp.mean(jnp.argmax(logits, -1) == batch["y"])
        return loss, {"accuracy": acc, C.ACTIVATIONS: hs}

    def steps_per_epoch(self) -> int:
        return self.passes * (len(self.data.y_train) // self.batch_size)

    def train_batches(self, epoch, data_state):
        n, b = len(self.data.y_train), self.batch_size
        per = n // b
        rng = np.random.default_rng([self.seed, int(epoch)])
        order = np.concatenate([rng.permutation(n)[: per * b] for _ in range(self.passes)])

        def make(i):
            idx = order[i * b:(i + 1) * b]
            return Batch("train", {"x": self.data.x_train[idx], "y": self.data.y_train[idx]})

        return IndexedBatches(self.steps_per_epoch(), make, data_state)

    def accuracy(self, params) -> float:
        key = self.compile_key()
        f = _EVAL_CACHE.get(key)
        if f is None:
            model = self.model
            f = _EVAL_CACHE[key] = jax.jit(
                lambda p, x, y: jnp.mean(jnp.argmax(model.apply({"params": p}, x)[0], -1) == y))
        return float(f(params, self.data.x_test, self.data.y_test))

    def evaluate(self, trainer, params, epoch):
        a = self.accuracy(params)
        return {"accuracy": a}, a


# ============================================================================ the sequence
class SequentialTask(Task):
    """Tasks trained one after another (see the module docstring). `tasks` train the same
    params; tasks with equal compile keys share compiled steps."""

    def __init__(self, tasks: Sequence[Task], epochs_per_dataset: int = 1, eval_seen: bool = True,
                 reset_optimizer: bool = False, name: str = "continual"):
        if not tasks:
            raise ValueError("continual.datasets is empty; list at least one dataset")
        if epochs_per_dataset < 1:
            raise ValueError(f"epochs_per_dataset={epochs_per_dataset}; use >= 1")
        self.tasks, self.epd = list(tasks), int(epochs_per_dataset)
        self.eval_seen, self.reset = bool(eval_seen), bool(reset_optimizer)
        self.name = name
        self.best_metric = "accuracy"
        self.best_mode = tasks[0].best_mode
        keys = [t.compile_key() for t in self.tasks]
        self.group = [keys.index(k) for k in keys]  # first task with the same compile key
        self.baseline: list[float] | None = None

    @property
    def num_epochs(self) -> int:
        return len(self.tasks) * self.epd

    def current(self, epoch: int) -> int:
        return min(epoch // self.epd, len(self.tasks) - 1)

    def compile_key(self) -> Hashable:
        return ("sequence",) + tuple(self.tasks[g].compile_key() for g in sorted(set(self.group)))

    def continual_layers(self, params):
        f = getattr(self.tasks[0], "continual_layers", None)
        return f(params) if f is not None else None

    def loss_fn(self, params, batch, static):
        g, sub = static
        return self.tasks[g].loss_fn(params, batch, sub)

    def steps_per_epoch(self) -> int:
        return self.tasks[0].steps_per_epoch()

    def train_batches(self, epoch, data_state):
        i = self.current(epoch)
        it = self.tasks[i].train_batches(epoch % self.epd, data_state)
        g = self.group[i]  # the static key carries the task group
        return MappedBatches(it, lambda b: Batch((g, b.static), b.arrays))

    def log_fields(self, epoch):
        return {"dataset": self.current(epoch)}

    def _score(self, trainer, params, j, epoch) -> float:
        t = self.tasks[j]
        m, s = t.evaluate(trainer, params, epoch)
        return float(m.get(t.best_metric, s if s is not None else float("nan")))

    def on_epoch_start(self, trainer, state, epoch, resumed):
        i = self.current(epoch)
        if epoch == 0 and not resumed:  # accuracy of the initial model (forward transfer's baseline)
            self.baseline = [self._score(trainer, state["params"], j, -1) for j in range(len(self.tasks))] \
                if self.eval_seen else None
        if self.reset and epoch % self.epd == 0 and epoch > 0 and not resumed:
            state = trainer.reset_optimizer(state)
        return self.tasks[i].on_epoch_start(trainer, state, epoch % self.epd, resumed)

    def evaluate(self, trainer, params, epoch):
        i = self.current(epoch)
        m, s = self.tasks[i].evaluate(trainer, params, epoch)
        cur = float(m.get(self.tasks[i].best_metric, s if s is not None else float("nan")))
        out = {"accuracy": cur}
        if (epoch + 1) % self.epd == 0 and self.eval_seen:  # the last epoch on dataset i: row i of R
            row = [cur if j == i else self._score(trainer, params, j, epoch)
                   for j in range(min(i + 2, len(self.tasks)))]
            out["row"] = row
            out["seen_mean"] = float(np.mean(row[: i + 1]))
            if i == 0 and self.baseline is not None:
                out["baseline"] = self.baseline
        return out, cur

    def finish(self, trainer, state, out):
        res = sequence_results(out["history"], len(self.tasks), [t.name for t in self.tasks])
        res["replaced_units"] = _replaced(state)
        res["steps"] = out["step"]
        if res["matrix"]:
            res["plot"] = plot_matrix(res, os.path.join(trainer.workdir, "accuracy_matrix.png"))
        write_json(os.path.join(trainer.workdir, "results.json"), res)
        return res


def _replaced(state) -> int | None:
    s = C.cbp_state(state["opt_state"])
    return None if s is None else int(s.replaced)


def sequence_results(history: list[dict], n: int, names: Sequence[str]) -> dict:
    """Accuracy matrix R (None where not evaluated), new-task accuracy R[i, i], average
    accuracy, forgetting, backward / forward transfer from the Trainer's history."""
    R = [[None] * n for _ in range(n)]
    baseline = None
    for h in history:
        if "row" in h:
            R[int(h["dataset"])][: len(h["row"])] = h["row"]
        if "baseline" in h:
            baseline = h["baseline"]
    diag = [R[i][i] for i in range(n)]
    last = R[n - 1]
    res: dict[str, Any] = {"datasets": list(names), "matrix": R if any(d is not None for d in diag) else [],
                           "new_task_accuracy": diag, "baseline": baseline}
    if all(x is not None for x in last):
        res["average_accuracy"] = float(np.mean(last))
        if n > 1:
            res["forgetting"] = float(np.mean([max(R[i][j] for i in range(j, n - 1)) - last[j] for j in range(n - 1)]))
            res["backward_transfer"] = float(np.mean([last[j] - R[j][j] for j in range(n - 1)]))
    if baseline is not None and n > 1 and all(R[j - 1][j] is not None for j in range(1, n)):
        res["forward_transfer"] = float(np.mean([R[j - 1][j] - baseline[j] for j in range(1, n)]))
    return res


def plot_matrix(res: dict, path: str) -> str:
    """accuracy_matrix.png: the matrix (rows: after dataset i) and the new-task accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    R = np.array([[np.nan if x is None else x for x in row] for row in res["matrix"]], float)
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    im = ax[0].imshow(R, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
    ax[0].set_xlabel("evaluated on dataset j")
    ax[0].set_ylabel("after training on dataset i")
    ax[0].set_title("accuracy matrix")
    fig.colorbar(im, ax=ax[0])
    ax[1].plot(np.diag(R), marker="." if len(R) < 40 else None)
    ax[1].set_xlabel("dataset")
    ax[1].set_ylabel("accuracy on the new dataset")
    ax[1].set_ylim(0, 1)
    ax[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ============================================================================ the workflow
def digits_tasks(config: ConfigDict, model: MLPClassifier) -> list[ImageTask]:
    """config.data's permuted task sequence (digits or MNIST)."""
    d = config.data
    if d.source == "digits":
        train, test = load_digits_splits(float(d.test_fraction), int(config.seed))
    elif d.source == "mnist":
        train, test = load_mnist(d.data_dir)
    else:
        raise ValueError(f"config.data.source={d.source!r}; use digits or mnist")
    if int(d.max_train) > 0:
        train.images, train.labels = train.images[: int(d.max_train)], train.labels[: int(d.max_train)]
    n = int(d.num_tasks)
    if n < 1:
        raise ValueError(f"config.data.num_tasks={n}; use >= 1")
    return [ImageTask(permuted_task(train, test, t, d.permute, int(config.seed)), model, int(config.batch_size),
                      int(d.passes), seed=int(config.seed) * 100003 + t) for t in range(n)]


def variant_config(config: ConfigDict, variant: str) -> ConfigDict:
    """config with config.continual set for one compared variant (bp, cbp, l2, snp)."""
    if variant not in VARIANTS:
        raise ValueError(f"config.compare has {variant!r}; use a comma list of {', '.join(VARIANTS)}")
    c = copy.deepcopy(config)
    with c.unlocked():
        cc = c.continual
        cc.enabled = variant == "cbp"
        cc.l2 = float(config.baselines.l2) if variant == "l2" else 0.0
        cc.snp_shrink = float(config.baselines.snp_shrink) if variant == "snp" else 0.0
        cc.snp_noise = float(config.baselines.snp_noise) if variant == "snp" else 0.0
        c.compare = ""
    return c


def run_one(config: ConfigDict, workdir: str) -> dict:
    """Train the task sequence once with config.continual; returns results.json's dict."""
    widths = tuple(int(w) for w in str(config.mlp.widths).split(",") if w.strip())
    model = MLPClassifier(widths, int(config.mlp.classes))
    tasks = digits_tasks(config, model)
    seq = SequentialTask(tasks, int(config.epochs_per_dataset), bool(config.eval_seen),
                         bool(config.optim.get("reset_on_stage_change", False)))
    with config.unlocked():
        config.num_epochs = seq.num_epochs
    x0 = tasks[0].data.x_train[:1]
    params = jax.jit(model.init)(jax.random.PRNGKey(int(config.seed)), x0)["params"]
    trainer = Trainer(config, seq, workdir)
    state = trainer.init_state(params, seq.num_epochs * seq.steps_per_epoch())
    t0, c0 = time.time(), time.process_time()
    res = trainer.fit(state)
    res["wall_s"], res["cpu_s"] = time.time() - t0, time.process_time() - c0
    if not res.get("stopped"):
        write_json(os.path.join(workdir, "results.json"), res)
    return res


def run(config: ConfigDict, workdir: str) -> dict:
    """config.compare empty: one run; else each listed variant in workdir/<variant>/, then
    plasticity.png and a results.json comparing their new-task accuracy."""
    quiet_logs(config)
    if config.mode != "train":
        raise ValueError(f"config.mode={config.mode!r}; the continual workflow only trains (mode=train)")
    variants = [v.strip() for v in str(config.get("compare", "") or "").split(",") if v.strip()]
    if not variants:
        return run_one(config, workdir)
    subs = {v: variant_config(config, v) for v in variants}  # every name checked before the first run
    t0, c0 = time.time(), time.process_time()
    results = {}
    for v, sub in subs.items():
        print(f"== {VARIANT_TITLES[v]} -> {os.path.join(workdir, v)}", flush=True)
        results[v] = run_one(sub, os.path.join(workdir, v))
    summary = compare_summary(results, int(config.data.num_tasks), float(config.last_fraction))
    summary["wall_s"], summary["cpu_s"] = time.time() - t0, time.process_time() - c0
    summary["plot"] = plot_compare(results, os.path.join(workdir, "plasticity.png"), summary)
    write_json(os.path.join(workdir, "results.json"), summary)
    print(format_compare(summary), flush=True)
    return summary


def compare_summary(results: dict, n: int, last_fraction: float) -> dict:
    """Per variant: new-task accuracy over the first and the last `last_fraction` of tasks."""
    k = max(1, int(math.ceil(n * last_fraction)))
    out: dict[str, Any] = {"num_tasks": n, "window": k, "variants": {}}
    for v, r in results.items():
        diag = [x for x in r.get("new_task_accuracy", []) if x is not None]
        if not diag:
            continue
        out["variants"][v] = {"first": float(np.mean(diag[:k])), "last": float(np.mean(diag[-k:])),
                              "new_task_accuracy": diag, "average_accuracy": r.get("average_accuracy"),
                              "forgetting": r.get("forgetting"), "replaced_units": r.get("replaced_units"),
                              "wall_s": r.get("wall_s"), "cpu_s": r.get("cpu_s")}
    vs = out["variants"]
    if "bp" in vs and "cbp" in vs:
        out["cbp_minus_bp_last"] = vs["cbp"]["last"] - vs["bp"]["last"]
    return out


def format_compare(s: dict) -> str:
    lines = [f"new-task accuracy, mean over the first / last {s['window']} of {s['num_tasks']} tasks",
             f"{'variant':22s} {'first':>7s} {'last':>7s} {'change':>7s} {'replaced':>9s} {'cpu s':>7s}"]
    for v, r in s["variants"].items():
        rep = "" if r["replaced_units"] is None else str(r["replaced_units"])
        lines.append(f"{VARIANT_TITLES[v]:22s} {r['first']:7.3f} {r['last']:7.3f} {r['last'] - r['first']:+7.3f} "
                     f"{rep:>9s} {r['cpu_s'] or 0:7.0f}")
    if "cbp_minus_bp_last" in s:
        lines.append(f"continual backprop - backprop on the last tasks: {s['cbp_minus_bp_last']:+.3f}")
    return "\n".join(lines)


def plot_compare(results: dict, path: str, summary: dict) -> str:
    """plasticity.png: new-task accuracy per task of every variant (moving average)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for v, r in summary["variants"].items():
        y = np.asarray(r["new_task_accuracy"], float)
        w = max(1, min(len(y) // 15, 10))
        smooth = np.convolve(y, np.ones(w) / w, mode="valid")
        ax.plot(np.arange(len(smooth)) + w, smooth, label=f"{VARIANT_TITLES[v]} (last {r['last']:.3f})")
    ax.set_xlabel("task")
    ax.set_ylabel("test accuracy on the new task")
    ax.set_title("plasticity over a task sequence (moving average)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
