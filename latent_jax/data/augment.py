"""Image augmentation with ramps over training, and dataset multiplicity from a
token:parameter ratio (the science-llm MNIST recipe).

Augmentation: random rotation (degrees) and translation (fraction of the side), each image
augmented with probability `prob`; prob, degrees and translate ramp linearly from their
start to their end values over the first `auto_fraction` of training.

Multiplicity: how many augmented passes over the base data make one epoch so that the
tokens seen reach `ratio` tokens per parameter:
    multiplicity = ceil(ratio * param_count / (base_len * tokens_per_sample)), clipped to [1, max].
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ramped augmentation settings (see the module docstring)."""

    enabled: bool = False
    prob_start: float = 0.2
    prob_end: float = 1.0
    degrees_start: float = 0.0
    degrees_end: float = 15.0
    translate_start: float = 0.0
    translate_end: float = 0.1
    auto_fraction: float = 0.6

    def __post_init__(self):
        for k in ("prob_start", "prob_end", "translate_start", "translate_end"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise ValueError(f"augment.{k}={getattr(self, k)}; it must be in [0, 1]")
        if not 0.0 < self.auto_fraction <= 1.0:
            raise ValueError(f"augment.auto_fraction={self.auto_fraction}; it must be in (0, 1]")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AugmentConfig":
        d = dict(d)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown augment config keys {sorted(unknown)}; valid: {sorted(fields)}")
        return cls(**d)

    def at(self, step: int, total_steps: int) -> tuple[float, float, float]:
        """(prob, degrees, translate) at `step` of `total_steps`."""
        f = ramp_fraction(step, total_steps, self.auto_fraction)
        lerp = lambda a, b: a + (b - a) * f
        return (lerp(self.prob_start, self.prob_end), lerp(self.degrees_start, self.degrees_end),
                lerp(self.translate_start, self.translate_end))


def ramp_fraction(step: int, total_steps: int, auto_fraction: float = 1.0) -> float:
    """Linear ramp 0 -> 1 reached at auto_fraction * total_steps, then held at 1."""
    span = max(1.0, auto_fraction * max(total_steps, 1))
    return float(min(1.0, max(0.0, step / span)))


def affine_augment(images: np.ndarray, rng: np.random.Generator, prob: float, degrees: float,
                   translate: float) -> np.ndarray:
    """Randomly rotate (uniform in +-degrees) and shift (uniform in +-translate * side) each
    uint8 image (N, H, W) with probability prob; bilinear, zero fill. Returns uint8."""
    images = np.asarray(images)
    N, H, W = images.shape
    apply = rng.random(N) < prob
    if not apply.any() or (degrees <= 0 and translate <= 0):
        return images.copy()
    theta = np.deg2rad(rng.uniform(-degrees, degrees, N)) * apply
    tx = rng.uniform(-translate, translate, N) * W * apply
    ty = rng.uniform(-translate, translate, N) * H * apply
    cy, cx = (H - 1) / 2.0, (W - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing="ij")
    # inverse map: output pixel -> source coordinate
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    yo, xo = yy[None] - cy - ty[:, None, None], xx[None] - cx - tx[:, None, None]
    sx = c * xo + s * yo + cx
    sy = -s * xo + c * yo + cy
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = sx - x0, sy - y0
    img = images.astype(np.float64)
    n_idx = np.arange(N)[:, None, None]

    def at(yi, xi):
        ok = (yi >= 0) & (yi < H) & (xi >= 0) & (xi < W)
        return np.where(ok, img[n_idx, np.clip(yi, 0, H - 1), np.clip(xi, 0, W - 1)], 0.0)

    out = (at(y0, x0) * (1 - fx) * (1 - fy) + at(y0, x0 + 1) * fx * (1 - fy)
           + at(y0 + 1, x0) * (1 - fx) * fy + at(y0 + 1, x0 + 1) * fx * fy)
    out = np.where(apply[:, None, None], out, img)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def dataset_multiplicity(ratio: float, param_count: int, base_len: int, tokens_per_sample: int,
                         max_multiplicity: int = 0) -> int:
    """ceil(ratio * param_count / (base_len * tokens_per_sample)), at least 1 and at most
    max_multiplicity (0 = no cap). ratio <= 0 gives 1."""
    if ratio <= 0:
        return 1
    if base_len <= 0 or tokens_per_sample <= 0:
        raise ValueError("dataset_multiplicity needs a non-empty dataset and tokens_per_sample > 0")
    m = max(1, math.ceil(ratio * param_count / (base_len * tokens_per_sample)))
    return min(m, max_multiplicity) if max_multiplicity > 0 else m
