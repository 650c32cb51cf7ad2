"""Entry point: python -m latent_jax.main --config=configs/X.py[:preset] --workdir DIR

The config's `workflow` picks what runs (see WORKFLOWS); `mode` (train | eval) is read by
the workflow. Any field may be overridden with --config.a.b=value; unknown keys are
rejected with the list of valid ones.
"""

from __future__ import annotations

import importlib
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from latent_jax.parallel import initialize_distributed
from latent_jax.paths import is_uri, resolve_config_paths, resolve_path

# workflow name -> "module:function"; each function is run(config, workdir) -> dict
WORKFLOWS = {
    "roundtrip": "latent_jax.demo:run",
    "coconut": "latent_jax.tasks.coconut:run",
    "act": "latent_jax.tasks.act:run",
    "diffusion": "latent_jax.tasks.diffusion:run",
    "medusa": "latent_jax.tasks.medusa:run",
    "multimodal_coconut": "latent_jax.tasks.coconut_mm:run",
    "grpo": "latent_jax.rl.workflow:run",
    "continual": "latent_jax.tasks.continual:run",
    "streaming": "latent_jax.tasks.streaming:run",
}

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.py")

_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Path to an ml_collections config file, optionally :preset.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics, plots). Default: config.workdir.")
flags.DEFINE_bool("multihost", False, "Initialise jax.distributed first (TPU pods, multi-node GPU; see launch/).")


def resolve_workflow(name: str):
    if name not in WORKFLOWS:
        raise SystemExit(f"error: unknown config.workflow={name!r}; valid: {', '.join(sorted(WORKFLOWS))}")
    mod, fn = WORKFLOWS[name].split(":")
    return getattr(importlib.import_module(mod), fn)


def _leaf_keys(node, prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        if hasattr(v, "items"):
            out += _leaf_keys(v, f"{prefix}{k}.") or [f"{prefix}{k}"]
        else:
            out.append(f"{prefix}{k}")
    return out


def _config_arg(argv: list[str]) -> str:
    """The --config value in argv (`--config=X` or `--config X`), else the default config."""
    path = _DEFAULT_CONFIG
    for i, a in enumerate(argv[1:], 1):
        if a.startswith("--config="):
            path = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
    return path


def _load_config(path: str):
    """The ConfigDict of `path` ('file.py[:preset]'); SystemExit with one line naming the file
    or preset when the file is missing, not Python, or get_config rejects the preset."""
    import importlib.util

    file, _, preset = path.partition(":")
    if not os.path.isfile(file):
        where = f" (looked in {os.getcwd()})" if not os.path.isabs(file) else ""
        raise SystemExit(f"error: --config file {file} does not exist{where}; pass a config file such as "
                         "configs/prosqa_coconut.py[:preset]")
    spec = importlib.util.spec_from_file_location("_latent_jax_config_check", file)
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: --config {file} is not a Python config file; pass a .py file with get_config()")
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except SyntaxError as e:
        raise SystemExit(f"error: --config {file} line {e.lineno}: {e.msg}; fix the config file") from None
    if not hasattr(mod, "get_config"):
        raise SystemExit(f"error: --config {file} has no get_config(); a config file defines get_config(arg=None)")
    try:
        return mod.get_config(preset) if preset else mod.get_config()
    except (ValueError, KeyError) as e:  # an unknown preset: the config file names the valid ones
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SystemExit(f"error: --config {path}: {msg}") from None


def check_override_keys(argv: list[str]) -> None:
    """Before absl parses the flags: exit with one line when --config names a missing file or an
    unknown preset, or an --config.a.b=value override names no field of the config (listing the
    valid keys). Other failures of a config file are left to config_flags, with its traceback."""
    path = _config_arg(argv)
    keys = [a[len("--config."):].split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    try:
        cfg = _load_config(path)
    except SystemExit:
        raise
    except Exception:  # noqa: BLE001 - config_flags reports a broken config file itself
        return
    for k in keys:
        node = cfg
        for part in k.split("."):
            if hasattr(node, "items") and part in node:
                node = node[part]
            else:
                raise SystemExit(
                    f"error: unknown config key {k!r} for {path}; valid keys: {', '.join(sorted(_leaf_keys(cfg)))}"
                )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; use --config.key=value to override config fields")
    config = _CONFIG.value
    # relative paths are taken from the current directory, once, here: Orbax needs absolute
    # paths and the workflows join paths under workdir; URIs (gs://...) pass through
    workdir = resolve_path(flags.FLAGS.workdir or config.get("workdir") or "runs/default")
    resolve_config_paths(config)
    if flags.FLAGS.multihost:
        initialize_distributed()  # coordinator / process ids come from the TPU or SLURM environment
    run = resolve_workflow(config.workflow)
    if not is_uri(workdir):
        os.makedirs(workdir, exist_ok=True)
    try:
        run(config, workdir)
    except (FileNotFoundError, ValueError) as e:  # user-caused problems: one line, no traceback
        if os.environ.get("LATENT_JAX_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    try:
        check_override_keys(sys.argv)
    except SystemExit as e:  # a bad --config: its one line, exit status 2 as for every user error
        print(e.code, file=sys.stderr)
        raise SystemExit(2) from None
    app.run(main)
