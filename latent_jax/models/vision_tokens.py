"""Image tokenizers for decoder LMs: raw pixel tokens or learned encoders -> inputs_embeds.

Raw pixel tokens (the science-llm layout): every pixel's intensity byte (0..255) is a
token id, preceded by BOS; class labels are tokens after the byte range and the
specials, so a 10-class problem is predicted as the next token after the image:

    ids 0..255 = intensity bytes, 256 = BOS, 257 = PAD, 258 = EOS, 259..268 = labels 0..9

Learned encoders map a (B, H, W) image to (B, N, d_model) embeddings that replace the
pixel-token embeddings (BOS is still the decoder's own embedding):

    conv     two 3x3 convolutions (the second with stride patch_size), one token per output cell
    patch    non-overlapping patch_size x patch_size patches through a 2-layer MLP
    wavelet  one-level 2-D Haar transform (LL, LH, HL, HH at half resolution) through an MLP
    siren    per-pixel (intensity, x, y) through sine layers (Sitzmann et al. 2020)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from latent_jax.models.config import ModelConfig
from latent_jax.models.decoder import Decoder

Array = jax.Array

BYTE_RANGE = 256
BOS_ID = 256
PAD_ID = 257
EOS_ID = 258
LABEL_OFFSET = 259


def vocab_size(num_labels: int = 10) -> int:
    """Vocabulary of the pixel-token layout: bytes, specials, then one token per label."""
    return LABEL_OFFSET + num_labels


ENCODERS = ("raw", "conv", "patch", "wavelet", "siren")


@dataclasses.dataclass(frozen=True)
class VisionTokenConfig:
    """encoder: one of ENCODERS; hidden: encoder width; patch_size: patch side (patch) or
    second-conv stride (conv); siren_omega: first-layer frequency of SIREN;
    freeze_encoder: keep the encoder at its initial weights."""

    encoder: str = "conv"
    hidden: int = 64
    patch_size: int = 1
    siren_omega: float = 30.0
    freeze_encoder: bool = False
    num_labels: int = 10

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise ValueError(f"vision.encoder={self.encoder!r}; use one of {', '.join(ENCODERS)}")
        if self.patch_size < 1:
            raise ValueError(f"vision.patch_size={self.patch_size}; it must be >= 1")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VisionTokenConfig":
        d = dict(d)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown vision config keys {sorted(unknown)}; valid: {sorted(fields)}")
        return cls(**d)

    def num_tokens(self, height: int, width: int) -> int:
        """Image tokens per image (BOS not included)."""
        if self.encoder in ("raw", "siren"):
            return height * width
        if self.encoder == "wavelet":
            return (height // 2) * (width // 2)
        ps = self.patch_size
        if self.encoder == "conv":
            return -(-height // ps) * -(-width // ps)
        return (height // ps) * (width // ps)


# --------------------------------------------------------------------------- raw tokens
def pixel_tokens(images: np.ndarray | Array) -> Array:
    """(B, H, W) uint8 intensities -> (B, 1 + H*W) int32 token ids: BOS then the bytes."""
    images = jnp.asarray(images)
    B = images.shape[0]
    flat = images.reshape(B, -1).astype(jnp.int32)
    return jnp.concatenate([jnp.full((B, 1), BOS_ID, jnp.int32), flat], axis=1)


def label_token(labels: np.ndarray | Array) -> Array:
    """Class ids -> their label token ids."""
    return jnp.asarray(labels).astype(jnp.int32) + LABEL_OFFSET


def label_logits(logits: Array, num_labels: int = 10) -> Array:
    """The label tokens' logits (..., num_labels) out of full-vocabulary logits (..., V)."""
    return logits[..., LABEL_OFFSET:LABEL_OFFSET + num_labels]


# ------------------------------------------------------------------------------ encoders
def haar2d(x: Array) -> Array:
    """One-level orthonormal 2-D Haar transform of (B, H, W) -> (B, H/2, W/2, 4) [LL, LH, HL, HH]."""
    B, H, W = x.shape
    x = x[:, : H - H % 2, : W - W % 2]
    a, b = x[:, 0::2, 0::2], x[:, 0::2, 1::2]
    c, d = x[:, 1::2, 0::2], x[:, 1::2, 1::2]
    ll = (a + b + c + d) / 2
    lh = (a - b + c - d) / 2
    hl = (a + b - c - d) / 2
    hh = (a - b - c + d) / 2
    return jnp.stack([ll, lh, hl, hh], axis=-1)


class _Siren(nn.Module):
    features: int
    omega: float
    first: bool

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        bound = 1.0 / fan_in if self.first else np.sqrt(6.0 / fan_in) / self.omega
        init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
        return jnp.sin(self.omega * nn.Dense(self.features, kernel_init=init)(x))


class ImageEncoder(nn.Module):
    """(B, H, W) images in [0, 1] -> (B, N, d_model) embeddings (see the module docstring)."""

    config: VisionTokenConfig
    d_model: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: Array) -> Array:
        c = self.config
        x = images.astype(jnp.float32)
        B, H, W = x.shape
        if c.encoder == "conv":
            y = nn.gelu(nn.Conv(c.hidden, (3, 3), padding="SAME")(x[..., None]))
            y = nn.gelu(nn.Conv(c.hidden, (3, 3), strides=(c.patch_size, c.patch_size), padding="SAME")(y))
            feats = y.reshape(B, -1, c.hidden)
        elif c.encoder == "patch":
            ps = c.patch_size
            hp, wp = H // ps, W // ps
            p = rearrange(x[:, : hp * ps, : wp * ps], "b (hp ph) (wp pw) -> b (hp wp) (ph pw)", ph=ps, pw=ps)
            feats = nn.gelu(nn.Dense(c.hidden)(p))
        elif c.encoder == "wavelet":
            w = haar2d(x)
            feats = nn.gelu(nn.Dense(c.hidden)(w.reshape(B, -1, 4)))
        elif c.encoder == "siren":
            yy, xx = jnp.meshgrid(jnp.linspace(-1, 1, H), jnp.linspace(-1, 1, W), indexing="ij")
            coords = jnp.broadcast_to(jnp.stack([yy, xx], -1)[None], (B, H, W, 2))
            f = jnp.concatenate([x[..., None] * 2 - 1, coords], axis=-1).reshape(B, H * W, 3)
            f = _Siren(c.hidden, c.siren_omega, True)(f)
            feats = _Siren(c.hidden, 1.0, False)(f)
        else:
            raise ValueError(f"ImageEncoder does not handle encoder={c.encoder!r} (raw uses pixel_tokens)")
        return nn.Dense(self.d_model, dtype=self.dtype, kernel_init=nn.initializers.normal(0.02))(feats)


def init_encoder_params(vcfg: VisionTokenConfig, d_model: int, image_shape: tuple[int, int],
                        rng: Array | int = 0) -> dict:
    """Encoder params ({} for raw pixel tokens)."""
    if vcfg.encoder == "raw":
        return {}
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    return jax.jit(ImageEncoder(vcfg, d_model).init)(rng, x)["params"]


def image_inputs(params: dict, images: Array, vcfg: VisionTokenConfig, model_config: ModelConfig) -> Array:
    """(B, 1 + N, d_model) input embeddings for uint8 images (B, H, W): BOS then the image.

    params: {'decoder': ..., 'encoder': ...}. With freeze_encoder the encoder gets no gradient."""
    dec = Decoder(model_config)
    dp = {"params": params["decoder"]}
    if vcfg.encoder == "raw":
        return dec.apply(dp, pixel_tokens(images), method=Decoder.embed)
    enc_params = params["encoder"]
    if vcfg.freeze_encoder:
        enc_params = jax.lax.stop_gradient(enc_params)
    x = jnp.asarray(images).astype(jnp.float32) / 255.0
    emb = ImageEncoder(vcfg, model_config.hidden_size, model_config.jnp_dtype).apply({"params": enc_params}, x)
    B = emb.shape[0]
    bos = dec.apply(dp, jnp.full((B, 1), BOS_ID, jnp.int32), method=Decoder.embed)
    return jnp.concatenate([bos, emb.astype(bos.dtype)], axis=1)
