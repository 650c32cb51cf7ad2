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

# workflow name -> "module:function"; each function is run(config, workdir) -> dict
WORKFLOWS = {
    "roundtrip": "latent_jax.demo:run",
    "coconut": "latent_jax.train.loop:run",
    "act": "latent_jax.train.act_loop:run",
    "diffusion": "latent_jax.train.diffusion_loop:run",
    "medusa": "latent_jax.decoding.speculative:run_workflow",
    "multimodal_coconut": "latent_jax.train.mm_loop:run",
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


def check_override_keys(argv: list[str]) -> None:
    """Exit with a one-line error listing the valid keys when an --config.a.b=value override
    names no field of the config (before absl parses the flags)."""
    path, keys = _DEFAULT_CONFIG, []
    for a in argv[1:]:
        if a.startswith("--config="):
            path = a.split("=", 1)[1]
        elif a.startswith("--config."):
            keys.append(a[len("--config."):].split("=", 1)[0])
    if not keys:
        return
    file, _, preset = path.partition(":")
    try:
        import importlib.util

        spec = importlib.util.spec_from_file_location("_latent_jax_config_check", file)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        cfg = mod.get_config(preset) if preset else mod.get_config()
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
    workdir = flags.FLAGS.workdir or config.get("workdir") or "runs/default"
    if flags.FLAGS.multihost:
        from latent_jax.parallel import initialize_distributed

        initialize_distributed()  # coordinator / process ids come from the TPU or SLURM environment
    run = resolve_workflow(config.workflow)
    os.makedirs(workdir, exist_ok=True)
    try:
        run(config, workdir)
    except (FileNotFoundError, ValueError) as e:  # user-caused problems: one line, no traceback
        if os.environ.get("LATENT_JAX_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    check_override_keys(sys.argv)
    app.run(main)
