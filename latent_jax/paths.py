"""User-given paths: local paths become absolute (Orbax and the workdir layout need that),
URIs with a scheme (gs://, s3://, file://, hf://) pass through untouched."""

from __future__ import annotations

import os
import re

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_uri(path: str | os.PathLike) -> bool:
    """True for 'scheme://...' (gs://bucket/x, file:///tmp/x); False for local paths."""
    return bool(_SCHEME.match(os.fspath(path)))


def resolve_path(path: str | os.PathLike) -> str:
    """An absolute local path (with ~ expanded), or the URI unchanged; '' stays ''."""
    path = os.fspath(path)
    if not path or is_uri(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


def _looks_like_hub_id(path: str) -> bool:
    """'org/name' that is not a local path: a Hugging Face Hub id a loader may accept."""
    parts = path.split("/")
    return (len(parts) == 2 and all(parts) and not path.startswith((".", "~"))
            and not os.path.exists(path) and not os.path.exists(parts[0]))


def is_path_key(key: str) -> bool:
    """Config fields that hold a path: workdir, path and *_path / *_dir / *_file."""
    return key in ("workdir", "path") or key.endswith(("_path", "_dir", "_file"))


def resolve_config_paths(config, _prefix: str = "") -> list[str]:
    """Make every non-empty string path field of an ml_collections config (nested, see
    is_path_key) absolute, in place; URIs and, for a plain `path` field, Hub ids
    ('org/name' with no such local path) are kept. Returns the dotted keys changed."""
    changed = []
    for key in list(config.keys()):
        value = config[key]
        if hasattr(value, "items"):
            changed += resolve_config_paths(value, f"{_prefix}{key}.")
        elif isinstance(value, str) and value and is_path_key(key):
            if key == "path" and _looks_like_hub_id(value):
                continue
            new = resolve_path(value)
            if new != value:
                config[key] = new
                changed.append(f"{_prefix}{key}")
    return changed


# ----------------------------------------------------------------------------- the path layer
# Every file a run writes under its workdir goes through these functions, so a workdir may be a
# local directory or a URI that etils.epath / Orbax handle (gs://, s3://, ...): a URI is never
# turned into a local folder. file:// URIs are accepted too (mapped to the local path they name),
# which is how tests exercise the URI code path without a bucket.


def _file_uri_to_local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def as_path(path: str | os.PathLike):
    """An etils.epath.Path for a local path or a URI (gs://, s3://, file://, ...)."""
    from etils import epath

    path = os.fspath(path)
    if path.startswith("file://"):
        path = _file_uri_to_local(path)
    try:
        return epath.Path(path)
    except KeyError:  # a scheme epath has no backend for
        raise ValueError(f"{path}: no filesystem handles this URI scheme; use a local path or gs:// / s3://") from None


def orbax_path(path: str | os.PathLike) -> str:
    """The string to hand Orbax: URIs unchanged (gs://bucket/x reaches Orbax as given), file://
    URIs as the local path they name (Orbax / epath have no file:// backend)."""
    return _file_uri_to_local(os.fspath(path))


def join(base: str, *parts: str) -> str:
    """base/part/... for a local path or a URI (the scheme is kept; no os.path.abspath)."""
    out = os.fspath(base).rstrip("/") if is_uri(base) else os.fspath(base)
    for p in parts:
        out = f"{out}/{p}" if is_uri(out) else os.path.join(out, p)
    return out


def is_primary() -> bool:
    """True on the process that writes shared files (process 0 of a multi-host run)."""
    import jax

    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Every process of a multi-host run waits here until all have arrived (no-op with one)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def makedirs(path: str | os.PathLike) -> None:
    """Create the directory `path` (and parents) locally or under a URI."""
    as_path(path).mkdir(parents=True, exist_ok=True)


def exists(path: str | os.PathLike) -> bool:
    return as_path(path).exists()


def open_file(path: str | os.PathLike, mode: str = "r"):
    """A file object for `path` (local or URI); text modes use UTF-8."""
    return as_path(path).open(mode)


def write_text(path: str | os.PathLike, text: str, primary_only: bool = True) -> str:
    """Write `text` to `path`: atomically (temporary file, then rename) for local paths, in one
    object upload for URIs. With primary_only, other processes of a multi-host run skip it."""
    path = os.fspath(path)
    if primary_only and not is_primary():
        return path
    if is_uri(path):
        p = as_path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def write_json(path: str | os.PathLike, obj, primary_only: bool = True) -> str:
    """write_text of `obj` as indented JSON (numpy scalars and other objects via str)."""
    import json

    return write_text(path, json.dumps(obj, indent=2, default=str), primary_only)


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append `text` to `path`. Object stores cannot append: a URI file is read and rewritten
    (fine for metrics.jsonl-sized files)."""
    path = os.fspath(path)
    if not is_uri(path):
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
        return
    p = as_path(path)
    old = p.read_text() if p.exists() else ""
    p.write_text(old + text)
