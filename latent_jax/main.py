"""Entry point: python -m latent_jax.main --config=configs/X.py[:preset] --workdir DIR

The config's `workflow` picks what runs (see WORKFLOWS); `mode` (train | eval) is read by
the workflow. Any field may be overridden with --config.a.b=value; unknown keys and values
of the wrong type are rejected in one line. `--help` lists the config files, and with
--config a file's presets and fields with their defaults. A run that config.max_steps
stopped says so and how to resume. Unless config.verbose, only the library's own lines are
printed (absl at WARNING, XLA's C++ logs off).
"""

from __future__ import annotations

import ast
import glob
import importlib
import importlib.util
import os
import sys
import textwrap

from absl import app, flags
from ml_collections import config_flags

from latent_jax.parallel import initialize_distributed
from latent_jax.paths import is_uri, resolve_config_paths, resolve_path
from latent_jax.train.trainer import quiet_logs

# workflow name -> "module:function"; each function is run(config, workdir) -> dict
WORKFLOWS = {
    "roundtrip": "latent_jax.demo:run",
    "coconut": "latent_jax.tasks.coconut:run",
    "act": "latent_jax.tasks.act:run",
    "diffusion": "latent_jax.tasks.diffusion:run",
    "medusa": "latent_jax.tasks.medusa:run",
    "multimodal_coconut": "latent_jax.tasks.coconut_mm:run",
    "grpo": "latent_jax.tasks.grpo:run",
    "continual": "latent_jax.tasks.continual:run",
    "streaming": "latent_jax.tasks.streaming:run",
}

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.py")
DEFAULT_WORKDIR = "runs/default"  # when neither --workdir nor config.workdir is set
HELP_ARGS = ("--help", "-h", "-?", "--helpshort")

_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Path to an ml_collections config file, optionally :preset.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics, plots). Default: the config's "
                    f"workdir field when set, else {DEFAULT_WORKDIR}.")
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
    for a in argv[1:]:
        if a.startswith("--config.") and "=" in a:
            k, value = a[len("--config."):].split("=", 1)
            check_override_value(k, value, cfg)


# the parsers config_flags uses for fields of these types (bool before int: a bool is an int)
_TYPED = ((bool, "a bool (true/false)", flags.BooleanParser()), (int, "an int", flags.IntegerParser()),
          (float, "a float", flags.FloatParser()))


def check_override_value(key: str, value: str, cfg) -> None:
    """SystemExit with one line naming the key and its type when `value` does not parse as the
    type of cfg's field `key` (bool, int, float; other fields take any text)."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    for typ, name, parser in _TYPED:
        if isinstance(node, typ):
            try:
                parser.parse(value)
            except ValueError:
                raise SystemExit(f"error: --config.{key}={value}: {key} takes {name}, not {value!r} "
                                 f"(default {node!r})") from None
            return


def _summary(doc: str, width: int = 96) -> str:
    """The first paragraph of a docstring on one line, shortened to `width`."""
    return textwrap.shorten(" ".join((doc or "").strip().split("\n\n")[0].split()), width=width, placeholder=" ...")


def config_files(configs_dir: str) -> list[tuple[str, str]]:
    """(path, first paragraph of its docstring, shortened) of each config file in configs_dir: the .py files
    that define or import get_config (base.py and mm_common.py are shared fields, not configs)."""
    out = []
    for f in sorted(glob.glob(os.path.join(configs_dir, "*.py"))):
        tree = ast.parse(open(f, encoding="utf-8").read(), f)
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        names |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        if "get_config" in names:
            out.append((f, _summary(ast.get_docstring(tree) or "")))
    return out


def config_presets(file: str) -> str:
    """The presets of a config file as its get_config names them when given an unknown one
    ('' when it names none)."""
    spec = importlib.util.spec_from_file_location("_latent_jax_config_presets", file)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
        mod.get_config("--help")
    except ValueError as e:
        listed = str(e).strip().splitlines()[0].rsplit(";", 1)[-1].strip()
        for word in ("use ", "available: ", "valid: "):
            listed = listed[len(word):] if listed.startswith(word) else listed
        return listed
    except Exception:  # noqa: BLE001 - help shows what it can
        return ""
    return ""


def usage(argv: list[str]) -> str:
    """The --help text: usage and flags; without --config the config files; with --config that
    file's presets and every field with its default (under the preset, when one is given)."""
    here = os.path.dirname(_DEFAULT_CONFIG)
    rel = os.path.relpath(_DEFAULT_CONFIG)
    lines = [
        "usage: python -m latent_jax.main [--config=FILE.py[:PRESET]] [--workdir=DIR] [--multihost] "
        "[--config.KEY=VALUE ...]",
        "",
        "Runs the workflow the config file names (its `workflow` field) in --workdir.",
        "",
        "flags:",
        f"  --config=FILE.py[:PRESET]  config file and optional preset (default: {rel}, the embedded ProsQA default)",
        f"  --workdir=DIR              output directory (default: the config's workdir field when set, "
        f"else {DEFAULT_WORKDIR})",
        "  --multihost                initialise jax.distributed first (TPU pods, multi-node GPU; see launch/)",
        "  --config.KEY=VALUE         override a config field, e.g. --config.batch_size=16 "
        "--config.optim.learning_rate=1e-3",
        "  --help                     this text; with --config=FILE[:PRESET], that file's presets and fields",
    ]
    given = any(a.startswith("--config=") or a == "--config" for a in argv[1:])
    if not given:
        lines += ["", f"config files (in {os.path.relpath(here)}; --config=FILE --help lists a file's presets "
                  "and fields):"]
        files = config_files(here)
        width = max((len(os.path.relpath(f)) for f, _ in files), default=0)
        for f, doc in files:
            lines.append(f"  {os.path.relpath(f):<{width}}  {doc}")
        return "\n".join(lines)
    path = _config_arg(argv)
    file, _, preset = path.partition(":")
    cfg = _load_config(path)  # SystemExit with one line on a missing file or an unknown preset
    doc = ast.get_docstring(ast.parse(open(file, encoding="utf-8").read())) or ""
    workdir = cfg.get("workdir") or DEFAULT_WORKDIR
    lines += ["", f"config {file}:", textwrap.indent(doc.strip(), "  "), ""]
    presets = config_presets(file)
    if presets:
        lines.append(f"presets (--config={file}:PRESET): {presets}")
    lines += [f"workdir when --workdir is not given: {workdir}", "",
              f"fields and their defaults{f' under :{preset}' if preset else ''} (override with --config.KEY=VALUE):"]
    keys = _leaf_keys(cfg)
    for k in [k for k in keys if "." not in k] + [k for k in keys if "." in k]:  # top-level fields first
        node = cfg
        for part in k.split("."):
            node = node[part]
        text = repr(node.to_dict()) if hasattr(node, "to_dict") else repr(node)
        lines.append("  " + textwrap.shorten(f"{k} = {text}", width=108, placeholder=" ..."))
    return "\n".join(lines)


def stopped_message(result, config, workdir: str) -> str | None:
    """When config.max_steps stopped training (the workflow's result says stopped): one line
    naming the run, the step reached of the planned total, and how to resume; else None."""
    if not isinstance(result, dict) or not result.get("stopped"):
        return None
    step, total = result.get("step"), result.get("total_steps")
    where = f" in the {result['run']} run" if result.get("run") else ""
    of = f" of {total}" if total else ""
    not_run = result.get("not_run") or []
    skipped = f"; not run: {', '.join(not_run)}, so no results table" if not_run else ""
    return (f"training stopped early{where} at step {step}{of} (config.max_steps={int(config.get('max_steps', 0))})"
            f"{skipped}. To resume, run the same command with --workdir {workdir} and a larger --config.max_steps "
            "(0 = no limit): training continues from the last checkpoint.")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a flag error as one line (exit status 2) instead of two."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"error: {msg}; see python -m latent_jax.main --help", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; use --config.key=value to override config fields")
    config = _CONFIG.value
    quiet_logs(config)  # before the workflow's imports (datasets logs the JAX version at INFO)
    # relative paths are taken from the current directory, once, here: Orbax needs absolute
    # paths and the workflows join paths under workdir; URIs (gs://...) pass through
    workdir = resolve_path(flags.FLAGS.workdir or config.get("workdir") or DEFAULT_WORKDIR)
    resolve_config_paths(config)
    if flags.FLAGS.multihost:
        # coordinator / process ids come from the TPU or SLURM environment (or JAX_* variables)
        initialize_distributed(heartbeat_timeout_s=config.get("heartbeat_timeout_s"))
    run = resolve_workflow(config.workflow)
    if not is_uri(workdir):
        os.makedirs(workdir, exist_ok=True)
    try:
        result = run(config, workdir)
    except (FileNotFoundError, ValueError) as e:  # user-caused problems: one line, no traceback
        if os.environ.get("LATENT_JAX_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    msg = stopped_message(result, config, workdir)
    if msg:
        print(msg, flush=True)


if __name__ == "__main__":
    try:
        if any(a in HELP_ARGS for a in sys.argv[1:]):
            print(usage(sys.argv))
            raise SystemExit(0)
        check_override_keys(sys.argv)
    except SystemExit as e:  # a bad --config: its one line, exit status 2 as for every user error
        if e.code in (0, None):
            raise
        print(e.code, file=sys.stderr)
        raise SystemExit(2) from None
    app.run(main, flags_parser=parse_flags)
