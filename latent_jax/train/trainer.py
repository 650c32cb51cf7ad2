"""The one Trainer every workflow runs on, and the Task protocol a workflow implements.

The Trainer owns what every training run needs, written once: the device mesh, the sharded
train state {params, opt_state, step}, the optimizer (config.optim, with frozen-parameter
masks), one process-wide compile cache of jitted train steps, process-local batch placement
(jax.make_array_from_process_local_data), Orbax checkpoints with exact resume (step, epoch,
data-iterator position, history, best score), the eval cadence (config.eval_every_epochs),
keep-best-N by the task's metric, metrics.jsonl / TensorBoard / W&B, a progress bar, and an
atomic results.json.

Evaluation on several processes: every process evaluates every row. Evaluation sets are
built with process_count=1 (each process collates the whole split, in the same order), the
model is the same global params, and sampling keys are the same on every process; so each
process computes the same results over all rows, and the files (results.json,
predictions.jsonl) are written once, by process 0, through the path layer. Training batches
stay process-local rows; only evaluation is replicated (it is generation-bound and small).

A workflow is a Task: a small object with the pieces that differ. Subclass `Task` (its
defaults make every hook optional but `loss_fn`, `train_batches` and `steps_per_epoch`):

    name            label for logs and the progress bar
    best_metric     the key of evaluate()'s metrics that ranks checkpoints ("accuracy")
    best_mode       "max" | "min"
    compile_key()   hashable: everything loss_fn closes over (model config, flags); jitted
                    steps are shared by runs in one process with equal keys
    loss_fn(params, batch, static) -> (loss, metrics)
                    pure and jittable; `batch` a dict of arrays, `static` the hashable
                    shape key the batch was built with (one compile per distinct key)
    steps_per_epoch()
    train_batches(epoch, data_state) -> iterator of Batch(static, arrays)
                    with __len__ and get_state() (a JSON dict; passed back as data_state
                    to resume mid-epoch, None at an epoch start); arrays are this process's
                    rows (the Trainer places them on the mesh). IndexedBatches and
                    MappedBatches make one.
    on_epoch_start(trainer, state, epoch, resumed) -> state
                    stage hooks (e.g. trainer.reset_optimizer at a curriculum stage change)
    log_fields(epoch) -> dict   extra scalars logged with every train row (stage, ...)
    evaluate(trainer, params, epoch) -> (metrics, score)
                    validation; `score` ranks the model for export (None: this epoch cannot
                    be the best, e.g. an intermediate curriculum stage)
    export(trainer, params)     save the model of a new best score (e.g. workdir/best_model);
                                at the end of a run that never scored, the last model
    finish(trainer, state, out) -> dict
                    after the last epoch (test split, plots); returns the run's results

A worked example is in docs/architecture.md. Use:

    trainer = Trainer(config, task, workdir)
    state = trainer.init_state(params, total_updates, frozen=None, const=None)
    results = trainer.fit(state)          # resumes from workdir/checkpoints when present

config keys read here (defaults in configs/base.py): num_epochs, start_epoch (first epoch of
a fresh run), max_steps (stop and save, no evaluation; 0 = off), checkpoint_every_steps,
log_every, eval_every_epochs, keep_best, progress, wandb_project, mesh, optim. The history
(results and checkpoints) has one row per epoch: epoch, log_fields, train_loss (the epoch's
mean, exact across a mid-epoch resume) and, on evaluated epochs, evaluate()'s metrics.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Hashable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging as absl_logging
from ml_collections import ConfigDict
from tqdm import tqdm

from latent_jax import paths
from latent_jax.parallel import batch_sharding, make_mesh, param_shardings, replicated, use_mesh
from latent_jax.train.checkpoint import TrainCheckpointer
from latent_jax.train.continual import trainer_optimizer, update_extras
from latent_jax.train.metrics import MetricsWriter
from latent_jax.train.optim import make_optimizer, param_path


def quiet_logs(config: ConfigDict) -> None:
    """Unless config.verbose, only the library's own lines: absl at WARNING (Orbax logs every
    read and write at INFO, jax its backend probing, datasets the JAX version at import) and
    XLA's C++ log lines off (its "Very slow compile?" banner on large programs)."""
    if not config.get("verbose", False):
        absl_logging.set_verbosity(absl_logging.WARNING)
        quiet_xla_logs()


def quiet_xla_logs() -> None:
    """XLA's C++ logging (which TF_CPP_MIN_LOG_LEVEL sets only before jax is imported) at FATAL
    only: its errors that matter reach Python as exceptions."""
    try:  # the setter jax_logging_level uses, which would also silence jax's Python warnings
        from jax._src.lib import utils as jaxlib_utils

        jaxlib_utils.absl_set_min_log_level(3)
    except (ImportError, AttributeError):  # jax moved it: the public switch
        jax.config.update("jax_logging_level", "CRITICAL")


def check_mode(config: ConfigDict) -> None:
    if config.mode not in ("train", "eval"):
        raise ValueError(f"config.mode={config.mode!r}; use 'train' or 'eval'")


class Batch(NamedTuple):
    """One training batch: `static` (hashable shape key, passed to loss_fn) and its arrays."""

    static: Hashable
    arrays: dict


class Task:
    """The workflow-specific half of a training run (see the module docstring)."""

    name: str = "task"
    best_metric: str = "accuracy"
    best_mode: str = "max"

    def compile_key(self) -> Hashable:
        return id(self)

    def loss_fn(self, params: Any, batch: dict, static: Hashable) -> tuple[jax.Array, dict]:
        raise NotImplementedError

    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def train_batches(self, epoch: int, data_state: dict | None):
        raise NotImplementedError

    def on_epoch_start(self, trainer: "Trainer", state: dict, epoch: int, resumed: bool) -> dict:
        return state

    def log_fields(self, epoch: int) -> dict:
        return {}

    def evaluate(self, trainer: "Trainer", params: Any, epoch: int) -> tuple[dict, float | None]:
        return {}, None

    def export(self, trainer: "Trainer", params: Any) -> None:
        pass

    def finish(self, trainer: "Trainer", state: dict, out: dict) -> dict:
        return out


class IndexedBatches:
    """A resumable epoch iterator over `n` batches built by `make(i)` (i = 0..n-1); its
    state is {"next_index": i}. For tasks whose batch i of an epoch is a pure function of
    (seed, epoch, i)."""

    def __init__(self, n: int, make: Callable[[int], Batch], data_state: dict | None = None):
        self.n, self.make = int(n), make
        self.i = int((data_state or {}).get("next_index", 0))

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Batch]:
        while self.i < self.n:
            b = self.make(self.i)
            self.i += 1
            yield b

    def get_state(self) -> dict:
        return {"next_index": self.i}


class MappedBatches:
    """`fn` applied to every item of a resumable epoch iterator `it` (its len and get_state
    kept): e.g. a data pipeline's batches as Trainer Batches."""

    def __init__(self, it, fn: Callable[[Any], Batch]):
        self.it, self.fn = it, fn

    def __len__(self) -> int:
        return len(self.it)

    def __iter__(self) -> Iterator[Batch]:
        return map(self.fn, self.it)

    def get_state(self) -> dict:
        return self.it.get_state()


# JSON through the path layer: atomically for local paths, one upload for URIs (gs://...), and
# only on process 0 of a multi-host run (no two hosts race on one file)
write_json = paths.write_json


_STEP_CACHE: dict[tuple, Any] = {}  # jitted train steps shared by runs in one process


class Trainer:
    """Runs a Task: state, optimizer, compiled steps, batches, checkpoints, eval, metrics."""

    def __init__(self, config: ConfigDict, task: Task, workdir: str):
        self.config, self.task, self.workdir = config, task, workdir
        self.mesh = make_mesh(dict(config.mesh))
        self.tx: optax.GradientTransformation | None = None
        self.tx_key = ""
        self._sh = None
        self.const: dict = {}
        self._const_key = jax.tree.structure(self.const)
        paths.makedirs(workdir)

    # ------------------------------------------------------------------ state
    def init_state(self, params: Any, total_updates: int, frozen: Callable[[str], bool] | None = None,
                   tx: optax.GradientTransformation | None = None, const: dict | None = None) -> dict:
        """The sharded train state for `params` with config.optim over `total_updates`
        optimizer updates (params whose '/'-joined path satisfies `frozen` are not updated);
        or with the given `tx`. `const` (a dict, e.g. {"base": frozen model params}) is placed
        once on the mesh (self.const) and merged into the params every loss_fn sees, but is no
        part of the state: not trained, no optimizer state, not checkpointed."""
        self.const = self.put(const or {})
        self._const_key = jax.tree.structure(self.const)
        if tx is None:
            tx = make_optimizer(params, self.config.optim, total_updates, frozen=frozen)
            tx, continual_key = trainer_optimizer(tx, params, self.config, self.task)  # config.continual
            self.tx_key = json.dumps([self.config.optim.to_dict(), int(total_updates),
                                      _frozen_labels(params, frozen), continual_key], sort_keys=True, default=str)
        else:
            self.tx_key = str(id(tx))
        self.tx = tx
        # train steps (micro-batches) the run plans: what config.max_steps counts
        self.total_steps = int(total_updates) * max(1, int(self.config.optim.get("grad_accum", 1) or 1))
        params = jax.device_put(params, param_shardings(params, self.mesh))
        opt_sh = param_shardings(jax.eval_shape(tx.init, params), self.mesh)
        opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
        state = {"params": params, "opt_state": opt_state, "step": jnp.zeros((), jnp.int32)}
        self._sh = param_shardings(state, self.mesh)
        return jax.device_put(state, self._sh)

    def put(self, params: Any) -> Any:
        """`params` placed on the mesh by the logical-axis rules."""
        return jax.device_put(params, param_shardings(params, self.mesh))

    def reset_optimizer(self, state: dict) -> dict:
        """`state` with a freshly initialised optimizer state (same shardings)."""
        return {**state, "opt_state": jax.jit(self.tx.init, out_shardings=self._sh["opt_state"])(state["params"])}

    def restore_best(self, state: dict) -> dict:
        """`state` restored from the best (else the latest) checkpoint in workdir/checkpoints."""
        ckpt = TrainCheckpointer(os.path.join(self.workdir, "checkpoints"))
        restored = ckpt.restore_best(_template(state)) or ckpt.restore_latest(_template(state))
        ckpt.close()
        if restored is None:
            raise FileNotFoundError(f"no checkpoint under {self.workdir}/checkpoints; train first (mode=train)")
        return restored[0]

    # ------------------------------------------------------------------ steps
    def place(self, arrays: dict) -> dict:
        """This process's rows of each array, as global arrays sharded over the batch axes."""
        return {k: jax.make_array_from_process_local_data(batch_sharding(self.mesh, np.ndim(a)), np.asarray(a))
                for k, a in arrays.items()}

    def place_all(self, arrays: dict) -> dict:
        """Arrays every process holds whole (evaluation sets), as global arrays sharded over
        the batch axes (each device reads its block; nothing is sent between processes)."""
        return {k: jax.make_array_from_callback(np.shape(a), batch_sharding(self.mesh, np.ndim(a)),
                                                lambda i, a=np.asarray(a): a[i]) for k, a in arrays.items()}

    def train_step(self, state: dict, batch: Batch) -> tuple[dict, dict]:
        """One optimizer update on `batch` (compiled once per task, optimizer, mesh and static key)."""
        arrays = batch.arrays
        sig = tuple(sorted((k, np.ndim(a)) for k, a in arrays.items()))
        key = (self.task.compile_key(), self.tx_key, self.mesh, batch.static, sig, self._const_key)
        fn = _STEP_CACHE.get(key)
        if fn is None:
            fn = _STEP_CACHE[key] = self._compile(batch.static, sig)
        with use_mesh(self.mesh):  # traced with the decoder's activation constraints (parallel.constrain)
            return fn(state, self.place(arrays), self.const)

    def _compile(self, static: Hashable, sig: tuple):
        task, tx = self.task, self.tx

        def step(state, batch, const):
            (loss, aux), grads = jax.value_and_grad(lambda p: task.loss_fn({**p, **const}, batch, static),
                                                    has_aux=True)(state["params"])
            aux = dict(aux)
            extras = update_extras(aux, state["opt_state"])  # MLP activations for continual backprop
            updates, opt_state = tx.update(grads, state["opt_state"], state["params"], **extras)
            params = optax.apply_updates(state["params"], updates)
            metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}
            return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

        bsh = {k: batch_sharding(self.mesh, nd) for k, nd in sig}
        csh = param_shardings(self.const, self.mesh)
        return jax.jit(step, in_shardings=(self._sh, bsh, csh), out_shardings=(self._sh, replicated(self.mesh)),
                       donate_argnums=0)

    # ------------------------------------------------------------------ the loop
    def fit(self, state: dict, num_epochs: int | None = None) -> dict:
        """Train num_epochs (default config.num_epochs) epochs (resuming from workdir/checkpoints), evaluating every
        config.eval_every_epochs and at the end; returns task.finish's results, or
        {stopped: True, ...} when config.max_steps stopped the run (resumable)."""
        c, task = self.config, self.task
        num_epochs = int(c.num_epochs if num_epochs is None else num_epochs)
        ckpt = TrainCheckpointer(os.path.join(self.workdir, "checkpoints"), keep_best=int(c.keep_best),
                                 best_metric=task.best_metric, mode=task.best_mode)
        self.writer = writer = MetricsWriter(self.workdir, c.wandb_project, c.to_dict())
        start_epoch, data_state, history, best, loss_sum = int(c.start_epoch), None, [], None, (0.0, 0)
        if ckpt.latest_step() is not None:
            state, extra = ckpt.restore_latest(_template(state))
            start_epoch, data_state = int(extra["next_epoch"]), extra.get("data_state")
            history, best = list(extra.get("history", [])), extra.get("best")
            if data_state is not None:  # mid-epoch: the epoch's training-loss sum so far
                loss_sum = (jnp.float32(extra["loss_sum"][0]), int(extra["loss_sum"][1]))
            print(f"resumed from step {int(state['step'])} (epoch {start_epoch})", flush=True)

        def save(next_epoch: int, dstate, metrics=None):
            ckpt.save(int(state["step"]), state, metrics,
                      {"next_epoch": next_epoch, "data_state": dstate, "history": history, "best": best,
                       "loss_sum": [float(loss_sum[0]), loss_sum[1]]})
            ckpt.wait()

        log_every, eval_every = max(1, int(c.log_every)), max(1, int(c.eval_every_epochs))
        max_steps, ckpt_every = int(c.max_steps), int(c.checkpoint_every_steps)
        stopped, t0 = False, time.time()
        step = int(state["step"])  # counted on the host: reading state["step"] would block every step
        for epoch in range(start_epoch, num_epochs):
            fields = task.log_fields(epoch)
            state = task.on_epoch_start(self, state, epoch, data_state is not None)
            it = task.train_batches(epoch, data_state)
            if data_state is None:
                loss_sum = (0.0, 0)
            data_state = None
            tag = " ".join(f"{k} {v}" for k, v in fields.items())
            bar = tqdm(total=len(it), initial=int(it.get_state().get("next_index", 0)),
                       desc=f"{task.name} epoch {epoch + 1}/{num_epochs} {tag}".strip(), disable=not c.progress,
                       file=sys.stderr, dynamic_ncols=True)
            for batch in it:
                state, m = self.train_step(state, batch)
                step += 1
                loss_sum = (loss_sum[0] + m["loss"], loss_sum[1] + 1)  # on device: no wait per step
                bar.update(1)
                if step % log_every == 0:
                    m = {k: float(v) for k, v in m.items()}
                    bar.set_postfix(loss=f"{m['loss']:.4f}")
                    writer.write(step, {**m, "epoch": epoch, **fields}, prefix="train/")
                if ckpt_every and step % ckpt_every == 0:
                    save(epoch, it.get_state())
                if max_steps and step >= max_steps:
                    save(epoch, it.get_state())
                    stopped = True
                    break
            bar.close()
            if stopped:
                break
            train_loss = float(loss_sum[0]) / max(loss_sum[1], 1)
            if (epoch + 1) % eval_every and epoch + 1 < num_epochs:
                history.append({"epoch": epoch, **fields, "train_loss": train_loss})
                save(epoch + 1, None)
                continue
            metrics, score = task.evaluate(self, state["params"], epoch)
            history.append({"epoch": epoch, **fields, "train_loss": train_loss, **metrics})
            if metrics:
                writer.write(step, {**metrics, "epoch": epoch, **fields}, prefix="val/")
                print(f"[{task.name}] epoch {epoch + 1}/{num_epochs} {tag}: "
                      + " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
                      + f"  ({time.time() - t0:.0f}s)", flush=True)
            sign = 1.0 if task.best_mode == "max" else -1.0
            if score is not None and (best is None or sign * score > sign * best):
                best = float(score)
                task.export(self, state["params"])
            save(epoch + 1, None, {task.best_metric: metrics[task.best_metric]} if task.best_metric in metrics else None)
        ckpt.close()
        out: dict[str, Any] = {"history": history, "step": step, "stopped": stopped, "best": best,
                               "total_steps": getattr(self, "total_steps", None)}
        if not stopped:
            if best is None:  # never scored (e.g. no evaluation at the final stage): the last model
                task.export(self, state["params"])
            out = task.finish(self, state, out)
        writer.close()
        return out


def _template(state: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _frozen_labels(params: Any, frozen: Callable[[str], bool] | None) -> list[str]:
    if frozen is None:
        return []
    return sorted(param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0] if frozen(param_path(p)))
