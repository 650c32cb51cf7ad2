"""MNIST (28x28) through tensorflow-datasets, without TensorFlow.

The data is tfds's own `mnist` dataset (same name, version, features and splits), stored as
array_record files and read with `tfds.data_source`, which needs no TensorFlow. Prepare it
once; `prepare` downloads the four MNIST IDX files with tfds (checked against tfds's
checksums), or takes them from `--source_dir` (gzipped or not), and writes them with tfds's
MNIST builder, reading the IDX files with numpy and encoding the images with PIL where tfds's
stock generator and extractor would need TensorFlow:

    python -m latent_jax.data.mnist prepare --data_dir DATA_DIR [--source_dir DIR_WITH_IDX_FILES]

A directory that tfds itself prepared as array_record reads the same; one prepared as
tfrecord (tfds's default when TensorFlow is installed) is read with TensorFlow when it is
installed, and otherwise stops with the command above.
"""

from __future__ import annotations

import glob
import gzip
import importlib.util
import os
import sys

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist as tfds_mnist

from latent_jax.data.digits import ImageSplit

IDX_FILES = {  # split -> (images, labels) as distributed by the MNIST authors
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def prepare_command(data_dir: str) -> str:
    """The shell command that prepares MNIST in data_dir."""
    return f"python -m latent_jax.data.mnist prepare --data_dir {data_dir}"


def mnist_prepared(data_dir: str) -> bool:
    """True when data_dir holds a prepared tfds 'mnist' dataset (mnist/<version>/dataset_info.json)."""
    return bool(glob.glob(os.path.join(os.path.expanduser(data_dir), "mnist", "*", "dataset_info.json")))


def read_idx(path: str) -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array: (N, rows, cols) images or (N,) labels."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 8 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an MNIST IDX file of unsigned bytes (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims}, file holds {data.size} values (truncated?)")
    return data.reshape(dims)


class MNISTWithoutTF(tfds_mnist.MNIST, skip_registration=True):
    """tfds's MNIST builder whose examples are generated without TensorFlow (numpy IDX
    reading, PIL images); `source_dir` takes the IDX files from disk instead of downloading."""

    name = "mnist"
    # where tfds looks up the download checksums: those of tfds's own MNIST (the stock
    # lookup from this module would also need the importlib_resources backport)
    code_path = tfds.core.Path(tfds_mnist.__file__)

    def __init__(self, *, source_dir: str = "", **kw):
        self._source_dir = source_dir
        super().__init__(**kw)

    def _split_generators(self, dl_manager):
        names = [n for pair in IDX_FILES.values() for n in pair]
        if self._source_dir:
            files = {n: self._local(n) for n in names}
        else:  # the .gz files, checked against tfds's checksums; read_idx unzips (tfds's extractor needs TF)
            files = dl_manager.download({n: self.URL + n + ".gz" for n in names})
        return [tfds.core.SplitGenerator(name=split, gen_kwargs=dict(data_path=files[img], label_path=files[lab]))
                for split, (img, lab) in IDX_FILES.items()]

    def _local(self, stem: str) -> str:
        for name in (stem, stem + ".gz"):
            p = os.path.join(self._source_dir, name)
            if os.path.exists(p):
                return p
        raise FileNotFoundError(f"{stem}[.gz] not found in --source_dir {self._source_dir}")

    def _generate_examples(self, data_path, label_path):
        from PIL import Image

        images, labels = read_idx(os.fspath(data_path)), read_idx(os.fspath(label_path))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{data_path} / {label_path}: {images.shape} images for {labels.shape} labels")
        for i, (img, label) in enumerate(zip(images, labels)):
            yield i, {"image": Image.fromarray(img, "L"), "label": int(label)}


def prepare(data_dir: str, source_dir: str = "") -> str:
    """Write MNIST as tfds array_record files under data_dir; returns the dataset directory."""
    b = MNISTWithoutTF(data_dir=os.path.expanduser(data_dir), file_format="array_record", source_dir=source_dir)
    b.download_and_prepare()
    return str(b.data_dir)


def load_mnist(data_dir: str) -> tuple[ImageSplit, ImageSplit]:
    """(train, test) MNIST as uint8 (N, 28, 28) images and int32 labels."""
    data_dir = os.path.expanduser(data_dir or "")
    if not data_dir or not mnist_prepared(data_dir):
        raise FileNotFoundError(
            f"MNIST is not prepared in data.data_dir={data_dir!r}; prepare it with: "
            f"{prepare_command(data_dir or '~/tensorflow_datasets')}"
        )

    def split(name: str) -> ImageSplit:
        try:
            src = tfds.data_source("mnist", split=name, data_dir=data_dir, download=False)
        except Exception as e:  # noqa: BLE001 - not array_record: tfrecord needs TensorFlow to read
            if importlib.util.find_spec("tensorflow") is None:
                raise FileNotFoundError(
                    f"MNIST in {data_dir} is not in array_record format ({type(e).__name__}); re-prepare it with: "
                    f"{prepare_command(data_dir)}") from e
            ds = tfds.as_numpy(tfds.load("mnist", split=name, data_dir=data_dir, download=False, batch_size=-1))
            images, labels = ds["image"], ds["label"]
        else:
            rows = src.__getitems__(range(len(src)))
            images = np.stack([np.asarray(r["image"]) for r in rows])
            labels = np.asarray([r["label"] for r in rows])
        images = np.asarray(images, np.uint8).reshape(len(labels), 28, 28)
        return ImageSplit(images, np.asarray(labels, np.int32), f"mnist/{name}")

    return split("train"), split("test")


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m latent_jax.data.mnist")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="write MNIST as tfds array_record files (no TensorFlow needed)")
    p.add_argument("--data_dir", required=True, help="the tfds data directory (config.data.data_dir)")
    p.add_argument("--source_dir", default="", help="a directory with the four MNIST IDX files (else download)")
    a = ap.parse_args(argv)
    try:
        print(prepare(a.data_dir, a.source_dir))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
