"""Sequences of image-classification tasks for continual learning: permuted-pixel tasks (the
Permuted MNIST pattern: every task shuffles the input pixels with its own fixed permutation)
and label-permuted tasks (every task relabels the classes with its own permutation; the
pattern of Continual ImageNet's ever-new class pairs). Built from any ImageSplit (8x8
digits from scikit-learn, MNIST through tensorflow-datasets).

Task t's permutation is drawn from (seed, t) alone, so a task is the same whichever tasks
came before it and a resumed run rebuilds it exactly.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from latent_jax.data.digits import ImageSplit

KINDS = ("pixels", "labels")


@dataclasses.dataclass
class FlatTask:
    """One task: x (N, pixels) float32 in [0, 1], y (N,) int32, for train and test."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def flatten(split: ImageSplit) -> tuple[np.ndarray, np.ndarray]:
    """(N, H*W) float32 intensities in [0, 1] and int32 labels."""
    return split.images.reshape(len(split), -1).astype(np.float32) / 255.0, split.labels.astype(np.int32)


def permuted_task(train: ImageSplit, test: ImageSplit, index: int, kind: str = "pixels", seed: int = 0) -> FlatTask:
    """Task `index` of the sequence: the pixels (kind='pixels') or the class ids
    (kind='labels') permuted with a permutation drawn from (seed, index)."""
    if kind not in KINDS:
        raise ValueError(f"permutation kind {kind!r}; use one of {', '.join(KINDS)}")
    xtr, ytr = flatten(train)
    xte, yte = flatten(test)
    rng = np.random.default_rng([int(seed), int(index)])
    if kind == "pixels":
        perm = rng.permutation(xtr.shape[1])
        xtr, xte = xtr[:, perm], xte[:, perm]
    else:
        n = max(train.num_classes, test.num_classes)
        perm = rng.permutation(n).astype(np.int32)
        ytr, yte = perm[ytr], perm[yte]
    return FlatTask(f"{train.name.split('/')[0]}-{kind}-{index}", xtr, ytr, xte, yte)
