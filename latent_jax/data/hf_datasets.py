"""One split of a dataset through Hugging Face `datasets`, from wherever it lives:

- data files in a local directory (parquet, json), read with the packaged builders
  (`load_dataset("parquet" | "json", data_files=...)`, cached as Arrow like any HF load);
- a directory written by `save_to_disk` (a DatasetDict with `dataset_dict.json`, or one
  split's `Dataset` in `root/<split>/`), read with `load_from_disk`;
- a hub name such as `tomg-group-umd/cinepile`, downloaded where a network exists.

Each dataset module (cinepile, aokvqa) says which files it looks for; this module only
loads, and turns failures into one line naming the config key to set.
"""

from __future__ import annotations

import os
import re
from typing import Any

import datasets

_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_name(path: str) -> bool:
    """True when `path` is not a local file or directory and reads as `owner/name`."""
    return bool(path) and not os.path.exists(path) and _HUB_NAME.fullmatch(path) is not None


def saved_split(root: str, split: str, config_key: str = "data.path") -> Any | None:
    """The `split` of a save_to_disk directory (DatasetDict at root, or a Dataset at
    root/split), or None when root holds no saved dataset."""
    if os.path.exists(os.path.join(root, "dataset_dict.json")):
        dd = datasets.load_from_disk(root)
        if split not in dd:
            raise ValueError(f"the saved dataset in {root} has no {split!r} split (it has {', '.join(dd)}); "
                             f"set the split or --config.{config_key}")
        return dd[split]
    if os.path.exists(os.path.join(root, split, "state.json")):
        return datasets.load_from_disk(os.path.join(root, split))
    return None


def load_files(kind: str, files: list[str]) -> Any:
    """A Dataset of local data `files` of `kind` ("parquet" or "json"), in order."""
    return datasets.load_dataset(kind, data_files=list(files), split="train")


def load_hub(name: str, split: str, config_key: str = "data.path", **kw) -> Any:
    """The `split` of hub dataset `name`; any failure (no network, no such dataset or split)
    is a one-line FileNotFoundError naming `config_key`."""
    try:
        return datasets.load_dataset(name, split=split, **kw)
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, unknown split, ...
        why = " ".join(str(e).split())[:300]
        raise FileNotFoundError(
            f"config.{config_key}={name!r} is not a local directory and could not be loaded from the hub "
            f"({type(e).__name__}: {why}); set --config.{config_key} to a local copy") from e

