"""Training-state checkpoints (TrainCheckpointer: best N by a metric plus the latest, with JSON
side data) on Orbax, locally or under a URI (gs://...: the string reaches Orbax unchanged).

Model weights (save_model / load_model / load_any) live in latent_jax.models.io.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import numpy as np

from latent_jax.models.io import quiet_orbax
from latent_jax.paths import is_uri, orbax_path, resolve_path

_REPLACED_SUFFIX = ".replaced"  # a training step being re-saved (TrainCheckpointer.save of an existing step)


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


# --------------------------------------------------------------------------- training state
def _jsonable(x):
    if isinstance(x, dict) or hasattr(x, "items"):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.generic,)):
        return x.item()
    if isinstance(x, (np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    if hasattr(x, "to_dict"):  # ml_collections.ConfigDict
        return _jsonable(x.to_dict())
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)


class TrainCheckpointer:
    """Training checkpoints on orbax.checkpoint.CheckpointManager.

    Keeps the `keep_best` best steps by `metrics[best_metric]` (mode 'max' or 'min') plus,
    always, the latest step. Each step stores the state pytree and `extra`, a JSON dict
    (epoch, stage, data-iterator state, config ...). Orbax writes every step into a temporary
    directory and renames it when complete, so a killed save leaves the previous steps intact;
    leftover temporary directories are ignored and cleaned up.
    """

    def __init__(
        self,
        directory: str,
        keep_best: int = 2,
        best_metric: str = "accuracy",
        mode: str = "max",
        async_save: bool = False,
    ):
        if mode not in ("max", "min"):
            raise ValueError(f"mode={mode!r}; use 'max' or 'min'")
        if keep_best < 1:
            raise ValueError(f"keep_best={keep_best}; keep at least 1 checkpoint")
        ocp = _ocp()
        from orbax.checkpoint import checkpoint_managers as cm

        self.directory = resolve_path(directory)
        self._recover_replaced()
        self.best_metric = best_metric
        self.mode = mode
        metric = best_metric

        def get_metric(m):
            v = float(m[metric])
            return v if np.isfinite(v) else (-np.inf if mode == "max" else np.inf)

        policy = cm.AnyPreservationPolicy(
            [
                cm.LatestN(n=1),
                cm.BestN(get_metric_fn=get_metric, reverse=(mode == "min"), n=keep_best,
                         keep_checkpoints_without_metrics=False),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=get_metric,  # makes the manager record metrics with each step
            best_mode=mode,
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save,
        )
        self._mgr = ocp.CheckpointManager(orbax_path(self.directory), options=options, item_names=("state", "extra"))

    # ------------------------------------------------------------------ writing
    def save(self, step: int, state: Any, metrics: dict | None = None, extra: dict | None = None) -> bool:
        """Save `state` at `step` with optional `metrics` (ranking) and JSON `extra`.

        Saving a step that is already saved (a periodic save that falls on an epoch end, then
        the epoch-end save with validation metrics) replaces it, so the step is stored once,
        with the newer `extra` and the metrics of either save (the newer when both have them).
        The old copy is kept aside until the new one is complete."""
        m = None
        if metrics is not None:
            m = {k: float(np.asarray(v)) for k, v in metrics.items() if np.ndim(v) == 0}
            if self.best_metric not in m:
                raise ValueError(
                    f"metrics lack {self.best_metric!r} (have {sorted(m)}); pass it or set best_metric"
                )
        step = int(step)
        with quiet_orbax():
            if step in self._mgr.all_steps():
                ok = self._replace(step, state, m, extra)
            else:
                ok = self._save(step, state, m, extra)
        return bool(ok)

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _replace(self, step, state, m, extra):
        self._mgr.wait_until_finished()
        if m is None:
            m = self._mgr.metrics(step)
        src = self._step_dir(step)
        if self._in_place_only() or not os.path.isdir(src):  # not the default local layout
            self._mgr.delete(step)
            return self._save(step, state, m, extra)
        aside = src + _REPLACED_SUFFIX
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(src, aside)  # a kill from here on: _recover_replaced puts it back
        self._mgr.reload()
        ok = self._save(step, state, m, extra)
        self._mgr.wait_until_finished()
        shutil.rmtree(aside, ignore_errors=True)
        return ok

    def _in_place_only(self) -> bool:
        """URIs (no rename on object stores) and multi-process runs (every process would rename
        the same directory) replace a step through Orbax alone: delete, then save."""
        return is_uri(self.directory) or jax.process_count() > 1

    def _recover_replaced(self) -> None:
        """Put back a step set aside by a re-save that was killed before the new copy was complete."""
        if self._in_place_only() or not os.path.isdir(self.directory):
            return
        for name in os.listdir(self.directory):
            if not name.endswith(_REPLACED_SUFFIX):
                continue
            aside, dst = os.path.join(self.directory, name), os.path.join(self.directory, name[: -len(_REPLACED_SUFFIX)])
            if os.path.exists(dst):
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(aside, dst)

    def _save(self, step, state, m, extra):
        ocp = _ocp()
        return self._mgr.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                extra=ocp.args.JsonSave(_jsonable(extra or {})),
            ),
            metrics=m,
            force=True,
        )

    def wait(self) -> None:
        self._mgr.wait_until_finished()

    # ------------------------------------------------------------------ reading
    def all_steps(self) -> list[int]:
        return sorted(self._mgr.all_steps())

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def metrics(self, step: int) -> dict | None:
        return self._mgr.metrics(step)

    def best_step(self) -> int | None:
        """The kept step with the best metric (None when no step has metrics)."""
        best, best_v = None, None
        for s in self.all_steps():
            m = self._mgr.metrics(s)
            if not m or self.best_metric not in m:
                continue
            v = float(m[self.best_metric])
            if best_v is None or (v > best_v if self.mode == "max" else v < best_v):
                best, best_v = s, v
        return best

    def restore(self, step: int, template: Any = None) -> tuple[Any, dict]:
        """(state, extra) at `step`. `template`: a pytree of arrays or jax.ShapeDtypeStruct
        (with shardings) giving structure, dtypes and placement of the restored state."""
        ocp = _ocp()
        self._mgr.wait_until_finished()
        if step not in self._mgr.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; have {self.all_steps()}")
        if template is not None:
            template = jax.tree.map(
                lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else ocp.utils.to_shape_dtype_struct(x), template
            )
        with quiet_orbax():
            out = self._mgr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(template),
                    extra=ocp.args.JsonRestore(),
                ),
            )
        return out["state"], dict(out["extra"] or {})

    def restore_latest(self, template: Any = None) -> tuple[Any, dict] | None:
        """(state, extra) of the latest step, or None when the directory has no checkpoint."""
        step = self.latest_step()
        if step is None:
            return None
        return self.restore(step, template)

    def restore_best(self, template: Any = None) -> tuple[Any, dict] | None:
        step = self.best_step()
        if step is None:
            return None
        return self.restore(step, template)

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()

    def __enter__(self) -> "TrainCheckpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
