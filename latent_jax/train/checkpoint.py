"""Orbax checkpoints: model weights (save_model / load_model / load_any) and training state
(TrainCheckpointer: best N by a metric plus the latest, with JSON side data).

A model checkpoint directory holds

    params/             Orbax PyTree checkpoint of the decoder params
    model_config.json   ModelConfig.to_json()
    tokenizer files     copied from the source HF directory, when given

Every write goes to a temporary sibling directory first and is renamed into place, so a
write that is interrupted never destroys an existing good checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from typing import Any

import jax
import numpy as np

from latent_jax.models.config import ModelConfig

MODEL_CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
_PREVIOUS_SUFFIX = ".previous"


class CheckpointError(ValueError):
    """A path that is neither a usable HF directory nor a latent_jax checkpoint."""


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


@contextlib.contextmanager
def _quiet():
    """Keep Orbax's per-call INFO lines out of the console (warnings and errors still show)."""
    from absl import logging as absl_logging

    old = absl_logging.get_verbosity()
    if old > absl_logging.WARNING:  # absl: higher = more verbose (INFO=0 > WARNING=-1)
        absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        yield
    finally:
        absl_logging.set_verbosity(old)


# --------------------------------------------------------------------------- model weights
def save_model(path: str, params: Any, config: ModelConfig, tokenizer_dir: str | None = None) -> str:
    """Write params (Orbax PyTree) + model_config.json (+ tokenizer files) to `path`, atomically.

    An existing checkpoint at `path` is replaced only once the new one is complete.
    Returns the absolute path.
    """
    from latent_jax.models.hf import copy_tokenizer_files

    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{time.time_ns()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        with _quiet():
            ckptr = _ocp().StandardCheckpointer()
            ckptr.save(os.path.join(tmp, PARAMS_DIR), params)
            ckptr.wait_until_finished()
            ckptr.close()
        with open(os.path.join(tmp, MODEL_CONFIG_FILE), "w") as f:
            f.write(config.to_json())
        if tokenizer_dir and os.path.isdir(tokenizer_dir):
            copy_tokenizer_files(tokenizer_dir, tmp)
        prev = path + _PREVIOUS_SUFFIX
        if os.path.exists(path):
            shutil.rmtree(prev, ignore_errors=True)
            os.replace(path, prev)
        os.replace(tmp, path)
        shutil.rmtree(prev, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def is_model_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MODEL_CONFIG_FILE)) and os.path.isdir(os.path.join(path, PARAMS_DIR))


def is_hf_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and (
        os.path.isfile(os.path.join(path, "model.safetensors"))
        or os.path.isfile(os.path.join(path, "model.safetensors.index.json"))
        or any(n.endswith((".bin", ".pt", ".pth")) for n in os.listdir(path))  # load_hf names the fix
    )


def _resolve(path: str) -> str:
    """`path`, or its `.previous` twin left by a replace that was interrupted mid-swap."""
    path = os.fspath(path)
    if not os.path.exists(path) and is_model_checkpoint(path + _PREVIOUS_SUFFIX):
        return path + _PREVIOUS_SUFFIX
    return path


def _cast(params, dtype: str | None):
    if dtype is None:
        return params
    import jax.numpy as jnp

    dt = jnp.dtype(dtype)
    return jax.tree.map(lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def load_model(path: str, dtype: str | None = None, shardings: Any = None) -> tuple[ModelConfig, dict]:
    """(config, params) from a save_model checkpoint. `dtype` casts the float params (and sets
    config.param_dtype); `shardings` (a pytree of jax.sharding.Sharding matching the params)
    restores each array directly onto its devices."""
    src = _resolve(path)
    if not is_model_checkpoint(src):
        raise CheckpointError(
            f"{path} is not a latent_jax checkpoint (needs {MODEL_CONFIG_FILE} and {PARAMS_DIR}/); "
            "create one with `python -m latent_jax.convert hf-to-orbax --hf DIR --out CKPT`"
        )
    with open(os.path.join(src, MODEL_CONFIG_FILE)) as f:
        config = ModelConfig.from_json(f.read())
    with _quiet():
        return _restore_params(src, config, dtype, shardings)


def _restore_params(src: str, config: ModelConfig, dtype: str | None, shardings: Any) -> tuple[ModelConfig, dict]:
    ocp = _ocp()
    ckptr = ocp.StandardCheckpointer()
    pdir = os.path.join(src, PARAMS_DIR)
    meta = ckptr.metadata(pdir)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)

    def abstract(m, s=None):
        sh = s if s is not None else jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sh)

    if shardings is None:
        target = jax.tree.map(abstract, tree)
    else:
        target = jax.tree.map(abstract, tree, shardings)
    params = ckptr.restore(pdir, target)
    ckptr.close()
    params = _to_dict(params)
    if dtype is not None:
        params = _cast(params, dtype)
        config = config.replace(param_dtype=str(dtype))
    return config, params


def _to_dict(tree):
    if hasattr(tree, "items"):
        return {k: _to_dict(v) for k, v in tree.items()}
    return tree


def load_any(path: str, dtype: str | None = None, **config_overrides) -> tuple[ModelConfig, dict]:
    """(config, params) from an HF directory (config.json + safetensors) or a save_model
    checkpoint. `config_overrides` (e.g. scan_layers=True, dtype='bfloat16') apply to HF loads
    and, for Orbax checkpoints, to fields that do not change the param layout."""
    path = os.fspath(path)
    if not os.path.exists(path) and not os.path.exists(path + _PREVIOUS_SUFFIX):
        raise CheckpointError(f"{path} does not exist; pass an HF model directory or a latent_jax checkpoint")
    src = _resolve(path)
    if os.path.isdir(src) and is_model_checkpoint(src):
        config, params = load_model(src, dtype=dtype)
        if config_overrides:
            want_scan = config_overrides.pop("scan_layers", config.scan_layers)
            if want_scan != config.scan_layers:
                params = restack_layers(params, config, want_scan)
                config = config.replace(scan_layers=want_scan)
            config = config.replace(**config_overrides)
        return config, params
    if os.path.isdir(src) and is_hf_dir(src):
        from latent_jax.models.hf import load_hf

        if dtype is not None:
            config_overrides["param_dtype"] = str(dtype)
        return load_hf(src, **config_overrides)
    if os.path.isdir(src) and os.path.isfile(os.path.join(src, "config.json")):
        raise CheckpointError(f"{path} has config.json but no model.safetensors (or index); only safetensors weights are read")
    raise CheckpointError(
        f"{path} is neither an HF model directory (config.json + model.safetensors) nor a latent_jax "
        f"checkpoint ({MODEL_CONFIG_FILE} + {PARAMS_DIR}/)"
    )


def restack_layers(params: dict, config: ModelConfig, scan: bool) -> dict:
    """Convert params between per-layer (`layers_i`) and stacked (`layers/layer`) layouts."""
    params = dict(params)
    n = config.num_hidden_layers
    if scan and "layers" not in params:
        layers = [params.pop(f"layers_{i}") for i in range(n)]
        params["layers"] = {"layer": jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *layers)}
    elif not scan and "layers" in params:
        stacked = params.pop("layers")["layer"]
        for i in range(n):
            params[f"layers_{i}"] = jax.tree.map(lambda x: np.asarray(x)[i], stacked)
    return params


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

        self.directory = os.path.abspath(os.fspath(directory))
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
        self._mgr = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "extra"))

    # ------------------------------------------------------------------ writing
    def save(self, step: int, state: Any, metrics: dict | None = None, extra: dict | None = None) -> bool:
        """Save `state` at `step` with optional `metrics` (ranking) and JSON `extra`."""
        m = None
        if metrics is not None:
            m = {k: float(np.asarray(v)) for k, v in metrics.items() if np.ndim(v) == 0}
            if self.best_metric not in m:
                raise ValueError(
                    f"metrics lack {self.best_metric!r} (have {sorted(m)}); pass it or set best_metric"
                )
        with _quiet():
            ok = self._save(step, state, m, extra)
        return bool(ok)

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
        with _quiet():
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
