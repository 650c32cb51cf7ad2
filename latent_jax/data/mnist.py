"""MNIST (28x28) from a tensorflow-datasets directory that is already prepared locally.

Nothing is downloaded at run time and tensorflow-datasets is imported only here, lazily.
Prepare the data once with

    pip install tensorflow-datasets
    python -c "import tensorflow_datasets as tfds; tfds.builder('mnist', data_dir='DATA_DIR').download_and_prepare()"
"""

from __future__ import annotations

import glob
import os

import numpy as np

from latent_jax.data.digits import ImageSplit


def prepare_command(data_dir: str) -> str:
    """The shell command that prepares MNIST in data_dir."""
    return (
        "pip install tensorflow-datasets && python -c \"import tensorflow_datasets as tfds; "
        f"tfds.builder('mnist', data_dir='{data_dir}').download_and_prepare()\""
    )


def mnist_prepared(data_dir: str) -> bool:
    """True when data_dir holds a prepared tfds 'mnist' dataset (mnist/<version>/dataset_info.json)."""
    return bool(glob.glob(os.path.join(os.path.expanduser(data_dir), "mnist", "*", "dataset_info.json")))


def load_mnist(data_dir: str) -> tuple[ImageSplit, ImageSplit]:
    """(train, test) MNIST as uint8 (N, 28, 28) images and int32 labels."""
    data_dir = os.path.expanduser(data_dir or "")
    if not data_dir or not mnist_prepared(data_dir):
        raise FileNotFoundError(
            f"MNIST is not prepared in data.data_dir={data_dir!r}; prepare it with: {prepare_command(data_dir or '~/tensorflow_datasets')}"
        )
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise FileNotFoundError(
            "reading MNIST needs tensorflow-datasets; run: pip install tensorflow-datasets"
        ) from e

    def split(name: str) -> ImageSplit:
        try:  # array_record data source: no TensorFlow needed
            src = tfds.data_source("mnist", split=name, data_dir=data_dir, download=False)
            rows = [src[i] for i in range(len(src))]
            images = np.stack([np.asarray(r["image"]) for r in rows])
            labels = np.asarray([r["label"] for r in rows])
        except Exception:  # tfrecord-prepared data: the TensorFlow reader
            ds = tfds.as_numpy(tfds.load("mnist", split=name, data_dir=data_dir, download=False, batch_size=-1))
            images, labels = ds["image"], ds["label"]
        images = np.asarray(images, np.uint8).reshape(len(labels), 28, 28)
        return ImageSplit(images, np.asarray(labels, np.int32), f"mnist/{name}")

    return split("train"), split("test")
