"""Building blocks of the decoder: RMSNorm, rotary embeddings, GQA attention, gated MLP, KV cache.

Everything is a pure function of params and arrays. The KV cache is an explicit pytree
(`KVCache`) that is passed in and returned; it never lives inside a module.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn

import jax
import jax.numpy as jnp

from latent_jax.models.attention import Segment, attention
from latent_jax.models.config import ModelConfig
from latent_jax.parallel import cast_for_compute, constrain, param_axes

Array = jax.Array
HIDDEN_AXES = ("batch", "length", "act_embed")  # logical axes of hidden states (B, T, D)

ACTIVATIONS = {
    "silu": nn.silu,
    "swish": nn.silu,
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
}


# ---------------------------------------------------------------------------- cache
@flax.struct.dataclass
class KVCache:
    """Static-shape KV cache for every layer.

    k, v: (layers, batch, kv_heads, slots, head_dim), rotary already applied. Head-major, so
          attention reads each layer's keys without a transpose.
    pos:  (layers, batch, slots) int32, the token position held in each slot; -1 = empty.
          Positions are per layer so that pruning methods (TOVA) may keep different slots
          per layer; kept tokens retain their original positions.
    end:  () int32, the next slot to write (slots [0, end) have been written).

    Code outside this class never indexes the slot axis by number: it uses the slot
    operations below (pad_slots, slice_slots, take_slots, compact_slots, concat_slots).

    Layer-split form (`split_layers`): k, v and pos are tuples with one array per layer
    (k[i]: (batch * kv_heads, slots, head_dim), pos[i]: (batch, slots)). Decode loops carry
    this form: each layer's entries are then a buffer of their own, written in place and read
    by attention directly, where the stacked arrays cost a copy of every layer's K and V per
    step (a slice of the stacked array is not fused into the attention dot). Batch and heads
    are merged so that the buffer has the shape the attention dot reads at batch 1 too (with a
    separate batch axis of 1, XLA:CPU duplicated the in-place update for the squeezed reader
    and copied the buffers every step). Only the Decoder (scan_layers=False) takes this form;
    `stack_layers` turns it back. The slot operations need the stacked form.
    """

    k: Array
    v: Array
    pos: Array
    end: Array

    KV_SLOT_AXIS = 3  # slot axis of k and v (pos: axis 2), counted from the layer axis

    @classmethod
    def init(cls, config: ModelConfig, batch: int, slots: int, dtype=None) -> "KVCache":
        dtype = dtype or config.jnp_dtype
        shape = (config.num_hidden_layers, batch, config.num_key_value_heads, slots, config.head_dim)
        return cls(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            pos=jnp.full((config.num_hidden_layers, batch, slots), -1, jnp.int32),
            end=jnp.zeros((), jnp.int32),
        )

    @property
    def slots(self) -> int:
        return self.pos[0].shape[-1] if self.is_split else self.pos.shape[-1]

    @property
    def is_split(self) -> bool:
        """Whether this is the layer-split form (tuples of per-layer arrays)."""
        return isinstance(self.k, tuple)

    @property
    def dtype(self):
        return self.k[0].dtype if self.is_split else self.k.dtype

    def split_layers(self) -> "KVCache":
        """The layer-split form (one buffer per layer; see the class docstring)."""
        if self.is_split:
            return self
        n = self.pos.shape[0]
        m = lambda a: a.reshape((-1,) + a.shape[-2:])
        return self.replace(k=tuple(m(self.k[i]) for i in range(n)), v=tuple(m(self.v[i]) for i in range(n)),
                            pos=tuple(self.pos[i] for i in range(n)))

    def stack_layers(self) -> "KVCache":
        """The stacked form (leading layer axis) of a layer-split cache."""
        if not self.is_split:
            return self
        b = self.pos[0].shape[0]
        unmerge = lambda a: jnp.stack(a).reshape((len(a), b, -1) + a[0].shape[-2:])
        return self.replace(k=unmerge(self.k), v=unmerge(self.v), pos=jnp.stack(self.pos))

    def nbytes(self) -> int:
        return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves((self.k, self.v, self.pos)))

    # slot operations; leading axes before the layer axis (ACT's depth axis) are allowed
    def _axes(self) -> tuple[int, int]:
        lead = self.pos.ndim - 3
        return lead + self.KV_SLOT_AXIS, lead + 2

    def pad_slots(self, extra: int) -> "KVCache":
        """`extra` empty slots appended (pos -1)."""
        if extra <= 0:
            return self
        ka, pa = self._axes()

        def pad(a, axis, value):
            widths = [(0, 0)] * a.ndim
            widths[axis] = (0, extra)
            return jnp.pad(a, widths, constant_values=value)

        return self.replace(k=pad(self.k, ka, 0), v=pad(self.v, ka, 0), pos=pad(self.pos, pa, -1))

    def slice_slots(self, start: int, stop: int) -> "KVCache":
        """Slots [start, stop) (static bounds); `end` is left as it is."""
        ka, pa = self._axes()
        sl = lambda a, axis: jax.lax.slice_in_dim(a, start, stop, axis=axis)
        return self.replace(k=sl(self.k, ka), v=sl(self.v, ka), pos=sl(self.pos, pa))

    def take_slots(self, idx: Array) -> "KVCache":
        """Gather slots per layer and row: idx (..., layers, batch, n) -> a cache of n slots."""
        ka, pa = self._axes()
        kv_idx = jnp.expand_dims(idx, (ka - 1, ka + 1))
        return self.replace(
            k=jnp.take_along_axis(self.k, kv_idx, axis=ka),
            v=jnp.take_along_axis(self.v, kv_idx, axis=ka),
            pos=jnp.take_along_axis(self.pos, idx, axis=pa),
        )

    def compact_slots(self, start: Array, src: Array, n_keep: Array) -> "KVCache":
        """Slots [start, start + n) rewritten in place from slots start + src (src (n,) int, the
        same for every layer and row): the first n_keep keep their gathered entries, the rest
        are emptied (pos -1); end becomes start + n_keep. Tree attention keeps the accepted
        path of a verified candidate tree contiguous this way, touching only n slots."""
        ka, pa = self._axes()
        n = src.shape[0]
        start = jnp.asarray(start, jnp.int32)
        win = lambda a, axis: jax.lax.dynamic_slice_in_dim(a, start, n, axis=axis)
        k, v, pos = win(self.k, ka), win(self.v, ka), win(self.pos, pa)
        k, v, pos = jnp.take(k, src, axis=ka), jnp.take(v, src, axis=ka), jnp.take(pos, src, axis=pa)
        keep = jnp.arange(n) < n_keep
        pos = jnp.where(keep, pos, -1)
        put = lambda a, b, axis: jax.lax.dynamic_update_slice_in_dim(a, b, start, axis=axis)
        return self.replace(k=put(self.k, k, ka), v=put(self.v, v, ka), pos=put(self.pos, pos, pa),
                            end=start + jnp.asarray(n_keep, jnp.int32))

    def write_slots(self, new: "KVCache", start) -> "KVCache":
        """`new`'s slots written at [start, start + new.slots) (start may be traced); end becomes
        start + new.slots. Coconut's thought scan fills its thought buffer this way."""
        ka, pa = self._axes()
        start = jnp.asarray(start, jnp.int32)
        put = lambda a, b, axis: jax.lax.dynamic_update_slice_in_dim(a, b.astype(a.dtype), start, axis=axis)
        return self.replace(k=put(self.k, new.k, ka), v=put(self.v, new.v, ka), pos=put(self.pos, new.pos, pa),
                            end=start + new.slots)

    @classmethod
    def concat_slots(cls, parts: "list[KVCache]", end) -> "KVCache":
        """Slots of `parts` one after another, with the given `end`."""
        ka, pa = parts[0]._axes()
        return cls(
            k=jnp.concatenate([p.k for p in parts], axis=ka),
            v=jnp.concatenate([p.v for p in parts], axis=ka),
            pos=jnp.concatenate([p.pos for p in parts], axis=pa),
            end=jnp.asarray(end, jnp.int32),
        )

    @staticmethod
    def slot_major(kv: Array) -> Array:
        """(..., kv_heads, slots, head_dim) -> (..., slots, kv_heads, head_dim), for readers
        that want one row per slot."""
        return jnp.swapaxes(kv, -3, -2)


# ----------------------------------------------------------------------- norms, rope
class RMSNorm(nn.Module):
    eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = (x32 * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
        return scale.astype(self.dtype) * y


def rotary_cos_sin(config: ModelConfig, positions: Array) -> tuple[Array, Array]:
    """cos, sin of shape (batch, seq, rotary_dim) for integer positions (batch, seq).

    longrope (Phi-3) switches to the long factors when the largest position in the call is
    beyond original_max_position_embeddings, exactly as transformers does.
    """
    pos = positions.astype(jnp.float32)
    inv = jnp.asarray(config.inv_freq(long=False))
    if config.rope_type == "longrope":
        inv_long = jnp.asarray(config.inv_freq(long=True))
        use_long = jnp.max(positions) + 1 > config.rope_original_max_position_embeddings
        inv = jnp.where(use_long, inv_long, inv)
    freqs = pos[..., None] * inv
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    scale = config.rope_attention_scaling
    return jnp.cos(emb) * scale, jnp.sin(emb) * scale


def _rotate_half(x: Array) -> Array:
    h = x.shape[-1] // 2
    return jnp.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
    """x: (batch, seq, heads, head_dim); rotates the first cos.shape[-1] dims (partial rotary)."""
    rd = cos.shape[-1]
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    x_rot = x_rot * cos + _rotate_half(x_rot) * sin
    return jnp.concatenate([x_rot, x_pass], axis=-1) if x_pass.shape[-1] else x_rot


# ------------------------------------------------------------------------ attention
def weights_in_compute_dtype(name: str, weights: tuple[str, ...]):
    """A flax `promote_dtype` function for the module `name` whose last len(weights) arrays are the
    params `weights` (a Dense's (inputs, kernel, bias), an Embed's (embedding,) or (query,
    embedding)): everything in the compute dtype, the params cast where they are stored
    (parallel.cast_for_compute), so FSDP gathers the compute-dtype copy."""

    def promote(*xs, dtype=None, inexact=True):
        if dtype is None:
            return nn.dtypes.promote_dtype(*xs, dtype=dtype, inexact=inexact)
        n = len(xs) - len(weights)
        out = [None if x is None else jnp.asarray(x, dtype) for x in xs[:n]]
        for x, w in zip(xs[n:], weights):
            out.append(None if x is None else cast_for_compute(x, dtype, param_axes(f"{name}/{w}", x.ndim)))
        return out

    return promote


def dense(features: int, bias: bool, cfg: ModelConfig, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=bias,
        dtype=cfg.jnp_dtype,
        param_dtype=cfg.jnp_param_dtype,
        kernel_init=nn.initializers.normal(cfg.initializer_range),
        promote_dtype=weights_in_compute_dtype(name, ("kernel", "bias")),
        name=name,
    )


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, positions, key_pos, causal, window, layer_cache=None, cache_end=None, layer_idx=None,
                 prefix=None, key_mask=None):
        """x: (B, T, D); positions: (B, T); key_pos: (B, T) positions of these tokens as keys
        (-1 for padding). layer_cache: dict(k, v, pos) for this layer (k: (B * kv_heads, slots,
        head_dim), a layer-split cache's), or, when layer_idx is given, for every layer:
        this layer's entries are then updated in place in the full arrays, so a decode step
        never copies the whole cache.
        prefix: an optional read-only dict(k, v, pos) of this layer (k: (B, kv_heads, S, head_dim)),
        or a tuple of them, whose keys are attended before the cache's (or these tokens'); never
        written or copied (Coconut's question cache, and its thoughts' K/V, while the thoughts
        and the answer run).
        key_mask: optional boolean (B, T, K) over the cache's keys (or these T tokens' without a
        cache), ANDed with the position rule (tree attention: a candidate sees its ancestors only).

        Returns (out, new_layer_cache, attn_last) where attn_last is the newest query's
        attention probabilities (B, heads, keys); unused, it is removed under jit. Without a
        layer_cache, new_layer_cache is dict(k, v) of these T tokens (B, kv_heads, T, head_dim).
        """
        cfg = self.config
        B, T, _ = x.shape
        H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        if cfg.fused_qkv:
            qkv = dense(cfg.q_size + 2 * cfg.kv_size, cfg.attention_bias, cfg, "qkv_proj")(x)
            q, k, v = jnp.split(qkv, [cfg.q_size, cfg.q_size + cfg.kv_size], axis=-1)
        else:
            q = dense(cfg.q_size, cfg.attention_bias, cfg, "q_proj")(x)
            k = dense(cfg.kv_size, cfg.attention_bias, cfg, "k_proj")(x)
            v = dense(cfg.kv_size, cfg.attention_bias, cfg, "v_proj")(x)
        q = q.reshape(B, T, H, D)
        k = k.reshape(B, T, Hkv, D)
        v = v.reshape(B, T, Hkv, D)
        cos, sin = rotary_cos_sin(cfg, positions)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)

        new_cache = None
        if layer_cache is not None:
            zero = jnp.zeros((), jnp.int32)
            kd = layer_cache["k"].dtype
            kh, vh = k.transpose(0, 2, 1, 3).astype(kd), v.transpose(0, 2, 1, 3).astype(kd)  # head-major
            if layer_cache["k"].ndim == 3:  # this layer's own arrays (a layer-split cache)
                idx = (zero, cache_end, zero)
                k_m = jax.lax.dynamic_update_slice(layer_cache["k"], kh.reshape(B * Hkv, T, D), idx)
                v_m = jax.lax.dynamic_update_slice(layer_cache["v"], vh.reshape(B * Hkv, T, D), idx)
                kpos_all = jax.lax.dynamic_update_slice(layer_cache["pos"], key_pos.astype(jnp.int32), (zero, cache_end))
                new_cache = {"k": k_m, "v": v_m, "pos": kpos_all}
                k_all, v_all = k_m, v_m  # read as they are stored (models/attention.py, _dot)
            else:
                li = jnp.asarray(layer_idx, jnp.int32)
                idx = (li, zero, zero, cache_end, zero)
                new_cache = {
                    "k": jax.lax.dynamic_update_slice(layer_cache["k"], kh[None], idx),
                    "v": jax.lax.dynamic_update_slice(layer_cache["v"], vh[None], idx),
                    "pos": jax.lax.dynamic_update_slice(
                        layer_cache["pos"], key_pos[None].astype(jnp.int32), (li, zero, cache_end)
                    ),
                }
                k_all, v_all, kpos_all = (
                    jax.lax.dynamic_index_in_dim(new_cache[n], li, 0, keepdims=False) for n in ("k", "v", "pos")
                )
            k_all = k_all.astype(q.dtype)
            v_all = v_all.astype(q.dtype)
        else:
            k_all, v_all, kpos_all = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), key_pos
            # these tokens' own K/V (head-major), for a caller that keeps them (Decoder return_kv):
            # in training they leave the layer scan as outputs, no cache is threaded through it
            new_cache = {"k": k_all, "v": v_all}

        segments = [Segment(k_all, v_all, kpos_all, key_mask)]
        if prefix is not None:
            # this layer's read-only prefix segments, attended in order before the cache's (or
            # these tokens'); read in place, never concatenated with them (except by the fused kernels)
            segs = [prefix] if isinstance(prefix, dict) else list(prefix)
            segments[:0] = [Segment(s["k"].astype(q.dtype), s["v"].astype(q.dtype), s["pos"]) for s in segs]
        # the implementation config.attention chooses (models/attention.py); out (B, T, H, D)
        out, attn_last = attention(q, segments, positions, causal, window, config=cfg, cached=layer_cache is not None)
        out = out.reshape(B, T, H * D)
        out = dense(cfg.hidden_size, cfg.o_bias, cfg, "o_proj")(out)
        return out, new_cache, attn_last


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        act = ACTIVATIONS[cfg.hidden_act]
        if cfg.fused_gate_up:
            gu = dense(2 * cfg.intermediate_size, cfg.mlp_bias, cfg, "gate_up_proj")(x)
            gate, up = jnp.split(gu, 2, axis=-1)
        else:
            gate = dense(cfg.intermediate_size, cfg.mlp_bias, cfg, "gate_proj")(x)
            up = dense(cfg.intermediate_size, cfg.mlp_bias, cfg, "up_proj")(x)
        h = act(gate) * up
        # the hidden units' activations, for continual backprop (train/continual.py); a no-op
        # unless apply() is called with mutable=['intermediates']
        self.sow("intermediates", "hidden", h)
        return dense(cfg.hidden_size, cfg.mlp_bias, cfg, "down_proj")(h)


class DecoderLayer(nn.Module):
    """Pre-norm transformer block. Call signature is all arrays so it can be scanned/remat'd."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, positions, key_pos, causal, window, layer_cache=None, cache_end=None, layer_idx=None,
                 prefix=None, key_mask=None):
        cfg = self.config
        x = constrain(x, HIDDEN_AXES)  # split by batch under a mesh: FSDP gathers the weights instead
        norm = lambda name: RMSNorm(cfg.rms_norm_eps, cfg.jnp_dtype, cfg.jnp_param_dtype, name=name)
        h, new_cache, attn = Attention(cfg, name="self_attn")(
            norm("input_layernorm")(x), positions, key_pos, causal, window, layer_cache, cache_end, layer_idx, prefix,
            key_mask,
        )
        x = x + h
        x = x + MLP(cfg, name="mlp")(norm("post_attention_layernorm")(x))
        return constrain(x, HIDDEN_AXES), new_cache, attn
