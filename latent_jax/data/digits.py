"""scikit-learn's bundled 8x8 handwritten digits (1,797 images; ships with scikit-learn,
nothing is downloaded), as uint8 images and integer labels with a fixed train/test split."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class ImageSplit:
    """images (N, H, W) uint8 intensities 0..255; labels (N,) int32 class ids."""

    images: np.ndarray
    labels: np.ndarray
    name: str = ""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.images.shape[1:3])

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self) else 0


def load_digits_splits(test_fraction: float = 0.2, seed: int = 0) -> tuple[ImageSplit, ImageSplit]:
    """(train, test) of the 8x8 digits; intensities 0..16 rescaled to 0..255. The split is a
    seeded, class-stratified permutation, so it is the same on every machine."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction}; it must be in (0, 1)")
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = d.target.astype(np.int32)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr = rng.permutation(np.concatenate(train_idx))
    te = np.sort(np.concatenate(test_idx))
    return (ImageSplit(images[tr], labels[tr], "digits/train"), ImageSplit(images[te], labels[te], "digits/test"))
