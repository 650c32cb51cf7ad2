"""Vision towers and projectors of the vision-language families.

- InternViT (InternVL3): CLS token + absolute positions, pre-norm blocks with layer scale
  (lambda_1, lambda_2), optional RMS qk-norm over the full width; pixel-shuffle
  downsampling and a LayerNorm + 2-layer MLP projector into the LM width.
- SigLIP-style tower (Phi-4-multimodal): no CLS, NaViT-style bucketed position ids from a
  patch mask (padded HD crops), features from layer `feature_layer` (-2), 2x2 average
  pooling and a 2-layer GELU projector (the HD layout lives in latent_jax.models.multimodal).

Pixel inputs are (N, C, H, W) float32 as the transformers processors produce them (NCHW);
patch embedding is a reshape + Dense equal to the PyTorch stride=patch Conv2d.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange, reduce

from latent_jax.models.layers import ACTIVATIONS

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Architecture of a ViT tower. `kind` is 'internvit' or 'siglip'. Hashable."""

    kind: str = "internvit"
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_channels: int = 3
    image_size: int = 28
    patch_size: int = 7
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    norm_type: str = "layer_norm"  # internvit: layer_norm | rms_norm
    use_qk_norm: bool = False
    attention_bias: bool = True  # bias on q/k/v (InternViT: config.attention_bias; SigLIP: always)
    layer_scale_init_value: float = 0.1
    use_mean_pooling: bool = True  # InternViT: True -> no final layernorm
    feature_layer: int = -1  # which hidden state feeds the projector (-1 last, -2 second to last)
    dtype: str = "float32"
    param_dtype: str = "float32"
    hf_extra_json: str = "{}"

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def layers_needed(self) -> int:
        """How many encoder layers produce the selected feature (later layers are skipped)."""
        fl = self.feature_layer
        return self.num_hidden_layers + 1 + fl if fl < 0 else fl

    def replace(self, **kw) -> "VisionConfig":
        return dataclasses.replace(self, **kw)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "VisionConfig":
        return cls(**json.loads(text))


def _dt(name: str):
    return jnp.dtype(name)


def _layernorm(cfg: VisionConfig, name: str, eps: float | None = None) -> nn.Module:
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps if eps is None else eps,
        use_fast_variance=False,
        dtype=_dt(cfg.dtype),
        param_dtype=_dt(cfg.param_dtype),
        name=name,
    )


class _RMSNorm(nn.Module):
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        w = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)
        return (w * y.astype(x.dtype)).astype(x.dtype)


def _dense(cfg: VisionConfig, features: int, name: str, bias: bool = True) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=bias,
        dtype=_dt(cfg.dtype),
        param_dtype=_dt(cfg.param_dtype),
        kernel_init=nn.initializers.normal(0.02),
        name=name,
    )


def patchify(pixels: Array, patch: int) -> Array:
    """(N, C, H, W) -> (N, H/p * W/p, C*p*p), patch features ordered (C, ph, pw) like a torch conv kernel."""
    return rearrange(pixels, "n c (h ph) (w pw) -> n (h w) (c ph pw)", ph=patch, pw=patch)


class PatchEmbed(nn.Module):
    """Stride-p convolution as a Dense on flattened patches (kernel (C*p*p, D))."""

    cfg: VisionConfig

    @nn.compact
    def __call__(self, pixels: Array) -> Array:
        cfg = self.cfg
        x = patchify(pixels.astype(_dt(cfg.dtype)), cfg.patch_size)
        return _dense(cfg, cfg.hidden_size, "proj")(x)


class VisionAttention(nn.Module):
    cfg: VisionConfig

    @nn.compact
    def __call__(self, x: Array, key_mask: Array | None = None) -> Array:
        cfg = self.cfg
        B, T, D = x.shape
        H, hd = cfg.num_attention_heads, cfg.head_dim
        internvit = cfg.kind == "internvit"
        bias = cfg.attention_bias if internvit else True
        q = _dense(cfg, D, "q_proj", bias)(x)
        k = _dense(cfg, D, "k_proj", bias)(x)
        v = _dense(cfg, D, "v_proj", bias)(x)
        if internvit and cfg.use_qk_norm:
            q = _RMSNorm(1e-6, name="q_norm")(q)
            k = _RMSNorm(1e-6, name="k_norm")(k)
        q = q.reshape(B, T, H, hd)
        k = k.reshape(B, T, H, hd)
        v = v.reshape(B, T, H, hd)
        s = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) * (hd ** -0.5)
        if key_mask is not None:
            s = jnp.where(key_mask[:, None, None, :], s, jnp.finfo(jnp.float32).min)
        p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
        o = jnp.einsum("bhts,bshd->bthd", p, v).reshape(B, T, D)
        return _dense(cfg, D, "out_proj")(o)


class VisionMLP(nn.Module):
    cfg: VisionConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.cfg
        x = _dense(cfg, cfg.intermediate_size, "fc1")(x)
        x = ACTIVATIONS[cfg.hidden_act](x)
        return _dense(cfg, cfg.hidden_size, "fc2")(x)


class VisionBlock(nn.Module):
    """Pre-norm ViT block; InternViT adds layer scale (lambda_1, lambda_2) and may use RMSNorm."""

    cfg: VisionConfig

    @nn.compact
    def __call__(self, x: Array, key_mask: Array | None = None) -> Array:
        cfg = self.cfg
        if cfg.kind == "internvit":
            norm = (lambda n: _RMSNorm(cfg.layer_norm_eps, name=n)) if cfg.norm_type == "rms_norm" else (
                lambda n: _layernorm(cfg, n)
            )
            ls = nn.initializers.constant(cfg.layer_scale_init_value)
            lam1 = self.param("lambda_1", ls, (cfg.hidden_size,), _dt(cfg.param_dtype))
            lam2 = self.param("lambda_2", ls, (cfg.hidden_size,), _dt(cfg.param_dtype))
            x = x + lam1 * VisionAttention(cfg, name="attn")(norm("norm1")(x), key_mask)
            x = x + lam2 * VisionMLP(cfg, name="mlp")(norm("norm2")(x))
            return x
        x = x + VisionAttention(cfg, name="attn")(_layernorm(cfg, "norm1")(x), key_mask)
        x = x + VisionMLP(cfg, name="mlp")(_layernorm(cfg, "norm2")(x))
        return x


def siglip_position_ids(patch_mask: np.ndarray | Array, per_side: int) -> Array:
    """NaViT-style position ids (N, h*w) from a boolean patch mask (N, h, w), as transformers'
    Phi4MultimodalVisionEmbeddings computes them (fractional coordinates bucketed)."""
    patch_mask = jnp.asarray(patch_mask, bool)
    n, mh, mw = patch_mask.shape
    # torch.arange(1/n, 1, 1/n) in float32 (accumulated in double on CPU)
    step = 1.0 / per_side
    count = int(np.ceil((1.0 - step) / step))
    bounds = jnp.asarray(np.asarray([step + i * step for i in range(count)], np.float64).astype(np.float32))
    nb_h = jnp.sum(patch_mask[:, :, 0], axis=1).astype(jnp.float32)
    nb_w = jnp.sum(patch_mask[:, 0, :], axis=1).astype(jnp.float32)
    fh = jnp.arange(mh, dtype=jnp.float32)[None, :] * (1.0 / nb_h)[:, None]
    fw = jnp.arange(mw, dtype=jnp.float32)[None, :] * (1.0 / nb_w)[:, None]
    fh = jnp.minimum(fh, jnp.float32(1.0 - 1e-6))
    fw = jnp.minimum(fw, jnp.float32(1.0 - 1e-6))
    bh = jnp.searchsorted(bounds, fh, side="right")
    bw = jnp.searchsorted(bounds, fw, side="right")
    pos = (bh[:, :, None] * per_side + bw[:, None, :]).reshape(n, -1)
    return jnp.where(patch_mask.reshape(n, -1), pos, 0).astype(jnp.int32)


class VisionTower(nn.Module):
    """ViT encoder. Returns the selected feature map (N, tokens, D): for InternViT the
    patch tokens (CLS dropped) of `feature_layer`; for SigLIP every patch token."""

    cfg: VisionConfig

    @nn.compact
    def __call__(self, pixels: Array, patch_mask: Array | None = None) -> Array:
        cfg = self.cfg
        n = pixels.shape[0]
        x = PatchEmbed(cfg, name="patch_embed")(pixels)
        key_mask = None
        if cfg.kind == "internvit":
            cls = self.param("cls_token", nn.initializers.zeros, (1, 1, cfg.hidden_size), _dt(cfg.param_dtype))
            x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, cfg.hidden_size)).astype(x.dtype), x], axis=1)
            pos = self.param(
                "pos_embed", nn.initializers.zeros, (1, cfg.patches_per_side**2 + 1, cfg.hidden_size),
                _dt(cfg.param_dtype),
            )
            if pos.shape[1] != x.shape[1]:
                raise ValueError(
                    f"InternViT got {x.shape[1] - 1} patches but was trained on {pos.shape[1] - 1}; "
                    f"resize images to {cfg.image_size}x{cfg.image_size} tiles (latent_jax.models.image_processing)"
                )
            x = x + pos.astype(x.dtype)
        else:
            hp, wp = pixels.shape[2] // cfg.patch_size, pixels.shape[3] // cfg.patch_size
            if patch_mask is None:
                patch_mask = jnp.ones((n, hp, wp), bool)
            emb = nn.Embed(cfg.patches_per_side**2, cfg.hidden_size, param_dtype=_dt(cfg.param_dtype),
                           dtype=_dt(cfg.dtype), name="pos_embed")
            x = x + emb(siglip_position_ids(patch_mask, cfg.patches_per_side))
            key_mask = jnp.asarray(patch_mask, bool).reshape(n, -1)
        for i in range(cfg.layers_needed):
            x = VisionBlock(cfg, name=f"layers_{i}")(x, key_mask)
        if cfg.kind == "internvit":
            if cfg.feature_layer == -1 and not cfg.use_mean_pooling:
                x = _layernorm(cfg, "final_norm")(x)
            x = x[:, 1:]
        return x


def pixel_shuffle(x: Array, scale: float = 0.5) -> Array:
    """InternVL's pixel shuffle: (N, s, s, C) -> (N, s*scale, s*scale, C/scale^2); each r x r
    block (r = 1/scale) becomes one token whose channels are ordered (row, column, C)."""
    r = round(1 / scale)
    if r * scale != 1:
        raise ValueError(f"pixel_shuffle needs scale = 1/r for an integer r, got {scale}")
    return rearrange(x, "n (h rh) (w rw) c -> n h w (rh rw c)", rh=r, rw=r)


class InternVLProjector(nn.Module):
    """LayerNorm(eps 1e-5) -> Linear -> act -> Linear, from 4*D_vis to the LM width."""

    cfg: VisionConfig
    out_size: int
    act: str = "gelu"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = _layernorm(self.cfg, "layer_norm", eps=1e-5)(x)
        x = _dense(self.cfg, self.out_size, "linear_1")(x)
        x = ACTIVATIONS[self.act](x)
        return _dense(self.cfg, self.out_size, "linear_2")(x)


class Phi4Projector(nn.Module):
    """Phi-4-MM image projection: Linear up -> exact GELU -> Linear down; plus the learned
    newline (`sub_img_feature_extensor`) and separator (`global_img_feature_extensor`) vectors."""

    cfg: VisionConfig
    out_size: int

    def setup(self):
        d = self.cfg.hidden_size
        self.sub_newline = self.param("sub_newline", nn.initializers.zeros, (d,), _dt(self.cfg.param_dtype))
        self.global_sep = self.param("global_sep", nn.initializers.zeros, (d,), _dt(self.cfg.param_dtype))
        self.up = _dense(self.cfg, self.out_size, "up")
        self.down = _dense(self.cfg, self.out_size, "down")

    def __call__(self, x: Array) -> Array:
        return self.down(ACTIVATIONS["gelu"](self.up(x)))


def avg_pool_2x2(x: Array) -> Array:
    """(N, s, s, D) -> (N, ceil(s/2), ceil(s/2), D) 2x2 average pool; odd s is reflection-padded
    by one row/column first, as Phi-4-MM does."""
    if x.shape[1] % 2:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="reflect")
    return reduce(x, "n (h 2) (w 2) d -> n h w d", "mean")


def vision_param_count(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
