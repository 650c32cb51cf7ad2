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
