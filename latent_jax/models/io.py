"""Model checkpoints (weights only, no training state): save_model / load_model / load_any in
the latent_jax Orbax layout, plus the helpers the HF and VLM converters share.

A model checkpoint directory holds

    params/             Orbax PyTree checkpoint of the decoder params
    model_config.json   ModelConfig.to_json()
    tokenizer files     copied from the source HF directory, when given
    extra files         a workflow's own, when given (a Coconut run's coconut.json: tasks/coconut_model.py)

A local write goes to a temporary sibling directory first and is renamed into place, so a
write that is interrupted never destroys an existing good checkpoint. A URI destination
(gs://...) is written in place through Orbax and etils.epath (object stores have no rename;
Orbax commits the params directory last).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import threading
import time
from typing import Any

import jax
import numpy as np

from latent_jax.models.config import CHECKPOINT_FIX, ModelConfig, read_json_object
from latent_jax.models.hf import TOKENIZER_FILES, copy_tokenizer_files, load_hf
from latent_jax.paths import as_path, barrier, is_uri, resolve_path

MODEL_CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
PREVIOUS_SUFFIX = ".previous"

# Orbax lines that say nothing a user can act on: a step saved without metrics (mid-epoch
# saves have none; the best-N policy ranks only the steps that have them)
_NOISE = ("Requested `tracked_metric`; did not provide metrics.",)


class CheckpointError(ValueError):
    """A path that is neither a usable HF directory nor a latent_jax checkpoint."""


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in str(record.msg) for n in _NOISE)


class _Hold(logging.Filter):
    """Holds back the records of a call that may fail; they are dropped when it fails (its
    one-line error says what happened) and passed on when it succeeds."""

    def __init__(self):
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.held.append(record)
        return False


@contextlib.contextmanager
def quiet_orbax():
    """Keep Orbax's per-call INFO lines and known noise out of the console (warnings and
    errors still show)."""
    from absl import logging as absl_logging

    old = absl_logging.get_verbosity()
    if old > absl_logging.WARNING:  # absl: higher = more verbose (INFO=0 > WARNING=-1)
        absl_logging.set_verbosity(absl_logging.WARNING)
    noise = _DropNoise()
    logger = logging.getLogger("absl")
    logger.addFilter(noise)
    try:
        yield
    finally:
        logger.removeFilter(noise)
        absl_logging.set_verbosity(old)


def first_line(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --------------------------------------------------------------------------- model weights
def save_model(path: str, params: Any, config: ModelConfig, tokenizer_dir: str | None = None,
               extra_files: dict[str, str] | None = None) -> str:
    """Write params (Orbax PyTree) + model_config.json (+ tokenizer files, + `extra_files`:
    {file name: text}, e.g. a Coconut run's coconut.json) to `path`, atomically.

    An existing checkpoint at `path` is replaced only once the new one is complete.
    Returns the absolute path.
    """
    path = resolve_path(path)
    extra_files = dict(extra_files or {})
    if is_uri(path):
        return _save_model_uri(path, params, config, tokenizer_dir, extra_files)
    multi = jax.process_count() > 1  # every process calls this; Orbax's save is collective
    primary = jax.process_index() == 0
    # one temporary name all processes agree on in a multi-process run
    tmp = f"{path}.tmp-write" if multi else f"{path}.tmp-{os.getpid()}-{time.time_ns()}"
    if primary:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    _sync(f"save_model:start:{path}")
    try:
        with quiet_orbax():
            ckptr = _ocp().StandardCheckpointer()
            ckptr.save(os.path.join(tmp, PARAMS_DIR), params)
            ckptr.wait_until_finished()
            ckptr.close()
        if primary:
            with open(os.path.join(tmp, MODEL_CONFIG_FILE), "w") as f:
                f.write(config.to_json())
            if tokenizer_dir and os.path.isdir(tokenizer_dir):
                copy_tokenizer_files(tokenizer_dir, tmp)
            for name, text in extra_files.items():
                with open(os.path.join(tmp, name), "w") as f:
                    f.write(text)
            prev = path + PREVIOUS_SUFFIX
            if os.path.exists(path):
                shutil.rmtree(prev, ignore_errors=True)
                os.replace(path, prev)
            os.replace(tmp, path)
            shutil.rmtree(prev, ignore_errors=True)
    finally:
        if primary:
            shutil.rmtree(tmp, ignore_errors=True)
    _sync(f"save_model:end:{path}")
    return path


def _sync(name: str) -> None:
    """A barrier across the processes of a multi-process run (no-op with one process)."""
    barrier(name)


def _save_model_uri(path: str, params: Any, config: ModelConfig, tokenizer_dir: str | None,
                    extra_files: dict[str, str]) -> str:
    """save_model to a URI: Orbax writes params/ (committed last, replacing an old copy), then
    model_config.json and the tokenizer files go through etils.epath."""
    dst = as_path(path)
    dst.mkdir(parents=True, exist_ok=True)
    with quiet_orbax():
        ckptr = _ocp().StandardCheckpointer()
        ckptr.save(dst / PARAMS_DIR, params, force=True)
        ckptr.wait_until_finished()
        ckptr.close()
    if jax.process_index() != 0:
        _sync(f"save_model:end:{path}")
        return path
    (dst / MODEL_CONFIG_FILE).write_text(config.to_json())
    if tokenizer_dir and os.path.isdir(tokenizer_dir):
        for fn in TOKENIZER_FILES:
            if os.path.exists(os.path.join(tokenizer_dir, fn)):
                (dst / fn).write_bytes(open(os.path.join(tokenizer_dir, fn), "rb").read())
    for name, text in extra_files.items():
        (dst / name).write_text(text)
    _sync(f"save_model:end:{path}")
    return path


def is_model_checkpoint(path: str) -> bool:
    """True when `path` (local or URI) holds model_config.json and params/."""
    if is_uri(path):
        p = as_path(path)
        return (p / MODEL_CONFIG_FILE).is_file() and (p / PARAMS_DIR).is_dir()
    return os.path.isfile(os.path.join(path, MODEL_CONFIG_FILE)) and os.path.isdir(os.path.join(path, PARAMS_DIR))


def is_hf_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and (
        os.path.isfile(os.path.join(path, "model.safetensors"))
        or os.path.isfile(os.path.join(path, "model.safetensors.index.json"))
        or any(n.endswith((".bin", ".pt", ".pth")) for n in os.listdir(path))  # load_hf names the fix
    )


def resolve_checkpoint(path: str) -> str:
    """`path` made absolute (Orbax needs that; URIs are kept), or its `.previous` twin left by
    a replace that was interrupted mid-swap."""
    path = resolve_path(path)
    if not is_uri(path) and not os.path.exists(path) and is_model_checkpoint(path + PREVIOUS_SUFFIX):
        return path + PREVIOUS_SUFFIX
    return path


def cast_params(params, dtype: str | None):
    if dtype is None:
        return params
    import jax.numpy as jnp

    dt = jnp.dtype(dtype)
    return jax.tree.map(lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def load_model(path: str, dtype: str | None = None, shardings: Any = None) -> tuple[ModelConfig, dict]:
    """(config, params) from a save_model checkpoint. `dtype` casts the float params (and sets
    config.param_dtype); `shardings` (a pytree of jax.sharding.Sharding matching the params)
    restores each array directly onto its devices."""
    src = resolve_checkpoint(path)
    if not is_model_checkpoint(src):
        raise CheckpointError(
            f"{path} is not a latent_jax checkpoint (needs {MODEL_CONFIG_FILE} and {PARAMS_DIR}/); "
            "create one with `python -m latent_jax.convert hf-to-orbax --hf DIR --out CKPT`"
        )
    config = read_model_config(src)
    with quiet_orbax():
        return restore_params(src, config, dtype, shardings)


def read_model_config(src: str, cls=ModelConfig):
    """`cls.from_json` of src/model_config.json; CheckpointError naming the file when it is
    missing, not JSON or not a config of `cls`."""
    if is_uri(src):
        path = str(as_path(src) / MODEL_CONFIG_FILE)
        try:
            d = json.loads(as_path(path).read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path} cannot be read as JSON ({first_line(e)}); {CHECKPOINT_FIX}") from None
    else:
        path = os.path.join(src, MODEL_CONFIG_FILE)
        d = read_json_object(path, CHECKPOINT_FIX)
    try:
        return cls.from_json(json.dumps(d))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path} is not a {cls.__name__} ({first_line(e)}); {CHECKPOINT_FIX}") from None


def restore_params(src: str, config: ModelConfig, dtype: str | None, shardings: Any) -> tuple[ModelConfig, dict]:
    """Restore src/params. Damaged array or metadata files end in one CheckpointError naming
    the directory (Orbax's and tensorstore's own messages run to kilobytes)."""
    ocp = _ocp()
    pdir = str(as_path(src) / PARAMS_DIR) if is_uri(src) else os.path.join(src, PARAMS_DIR)
    hold, logger = _Hold(), logging.getLogger("absl")
    logger.addFilter(hold)
    failure = None
    ckptr = ocp.StandardCheckpointer()
    with draining_event_loops():  # a failed read's siblings finish before Orbax's loop closes
        try:
            meta = ckptr.metadata(pdir)
            tree = getattr(meta, "item_metadata", meta)
            tree = getattr(tree, "tree", tree)

            def abstract(m, s=None):
                sh = s if s is not None else jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
                return jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sh)

            if shardings is None:
                target = jax.tree.map(abstract, tree)
            else:
                target = jax.tree.map(abstract, tree, shardings)
            params = ckptr.restore(pdir, target)
        except Exception as e:  # noqa: BLE001 - any failure to read the files is a damaged checkpoint
            while e.__cause__ is not None:  # the innermost error names the file and what is wrong
                e = e.__cause__
            failure = first_line(e)
        finally:
            ckptr.close()
            logger.removeFilter(hold)
    if failure is not None:
        raise CheckpointError(f"{pdir} cannot be read ({failure}); {CHECKPOINT_FIX}")
    for record in hold.held:
        logger.handle(record)
    params = _to_dict(params)
    if shardings is None and jax.process_count() > 1:  # host arrays: each process places its own shards
        params = jax.device_get(params)
    if dtype is not None:
        params = cast_params(params, dtype)
        config = config.replace(param_dtype=str(dtype))
    return config, params


def _drain_and_close(loop: asyncio.AbstractEventLoop, close) -> None:
    """Close `loop` only after every task still pending on it has finished, their exceptions
    retrieved (a failed read leaves its sibling reads in flight: closing the loop under them
    makes their completions fail on other threads with 'Event loop is closed' and their
    abandoned coroutines and unread exceptions report at random moments, up to interpreter
    exit). The reads are local or remote array reads that finish on their own; a task still
    pending after DRAIN_TIMEOUT_S is cancelled and awaited."""
    if not loop.is_closed() and not loop.is_running():
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        if pending:
            done, late = loop.run_until_complete(asyncio.wait(pending, timeout=DRAIN_TIMEOUT_S))
            for t in late:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    close()


DRAIN_TIMEOUT_S = 600.0


class _DrainingPolicy(asyncio.DefaultEventLoopPolicy):
    """The default event-loop policy, except that a loop created on `thread` (the restoring
    thread: Orbax runs each restore on a fresh loop it closes as soon as the first read fails)
    drains its pending tasks before it closes (_drain_and_close)."""

    def __init__(self, thread: int):
        super().__init__()
        self.thread = thread

    def new_event_loop(self):
        loop = super().new_event_loop()
        if threading.get_ident() == self.thread:
            loop.close = functools.partial(_drain_and_close, loop, loop.close)
        return loop


@contextlib.contextmanager
def draining_event_loops():
    """Within the block, event loops created on this thread finish their pending tasks before
    they close (_DrainingPolicy); the previous policy is restored after it."""
    prev = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(_DrainingPolicy(threading.get_ident()))
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(prev)


def _to_dict(tree):
    if hasattr(tree, "items"):
        return {k: _to_dict(v) for k, v in tree.items()}
    return tree


def load_any(path: str, dtype: str | None = None, **config_overrides) -> tuple[ModelConfig, dict]:
    """(config, params) from an HF directory (config.json + safetensors) or a save_model
    checkpoint. `config_overrides` (e.g. scan_layers=True, dtype='bfloat16') apply to HF loads
    and, for Orbax checkpoints, to fields that do not change the param layout."""
    path = os.fspath(path)
    if is_uri(path):
        if not is_model_checkpoint(path):
            raise CheckpointError(f"{path} is not a latent_jax checkpoint ({MODEL_CONFIG_FILE} + {PARAMS_DIR}/); "
                                  "HF directories are read from local disk: stage them first (launch/tpu_vm.sh stage)")
        src = path
    elif not os.path.exists(path) and not os.path.exists(path + PREVIOUS_SUFFIX):
        raise CheckpointError(f"{path} does not exist; pass an HF model directory or a latent_jax checkpoint")
    else:
        src = resolve_checkpoint(path)
    if is_uri(src) or (os.path.isdir(src) and is_model_checkpoint(src)):
        config, params = load_model(src, dtype=dtype)
        if config_overrides:
            want_scan = config_overrides.pop("scan_layers", config.scan_layers)
            if want_scan != config.scan_layers:
                params = restack_layers(params, config, want_scan)
                config = config.replace(scan_layers=want_scan)
            config = config.replace(**config_overrides)
        return config, params
    if os.path.isdir(src) and is_hf_dir(src):
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


