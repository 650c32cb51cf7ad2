"""Attention kernels and the `model.attention` switch (auto | xla | chunked | cudnn | splash).

Every implementation computes the same softmax attention: the queries of T tokens over one or
more key segments (read-only prefix segments first, then the cache's keys or these tokens' own),
a key visible when the position rule allows it (`attention_mask_from_positions`: a real key,
causal, inside the sliding window) and, for tree attention, an extra boolean mask.

    xla      the reference (`attend`): the (T, keys) scores of every head at once, a hand-written
             backward; the only one that also returns the attention probabilities
    chunked  the same in XLA over blocks of `config.attention_chunk` queries (`attend_chunked`: a
             lax.map forward and a lax.scan backward that recomputes each block's probabilities
             from the saved row max and sum, as flash attention does): one block's scores exist
             at a time, in the forward and in the backward. Exact for every mask.
    cudnn    jax.nn.dot_product_attention(implementation="cudnn") (`attend_dot_product`; GPU,
             bf16 / fp16): the exact position mask, passed as a (B, 1, T, keys) boolean
    splash   Pallas splash attention (`attend_splash`; TPU, Pallas interpret mode elsewhere):
             masks by index (`splash_mask`: causal / sliding window, offset by the prefix length)
             and segment ids for padding. These equal the position rule when each row's real keys
             hold consecutive positions in index order and the queries are the last keys (left
             or right padding, Coconut's question / thoughts / answer segments): what every
             cache-less call in this library passes.
    auto     cudnn on GPU and splash on TPU where they apply; otherwise chunked from
             AUTO_CHUNKED_MIN_QUERIES queries; otherwise xla

The fused and chunked paths apply to calls without a KV cache (training, and the cache-less
prefix passes); decoding calls, which write a cache, use xla (chunked when chosen or long).
Decoding heuristics (TOVA, HiCo) read the newest query's attention probabilities: the xla path
returns them; the others compute that one row alone (`newest_query_probs`), which costs nothing
when unused (XLA removes it).
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from latent_jax.models.config import ConfigError, ModelConfig
from latent_jax.parallel import current_rules, spec_for

Array = jax.Array

_BIG_NEG = float(jnp.finfo(jnp.float32).min)
# auto: the chunked path from this many queries (long multimodal prompts), where nothing fused applies
AUTO_CHUNKED_MIN_QUERIES = 1024
SPLASH_BLOCK = 512  # splash's query / key block (clamped to the padded lengths; multiples of 128)


class Segment(NamedTuple):
    """One run of keys: k, v (B, Hkv, S, D), or (B * Hkv, S, D) from a layer-split cache; pos (B, S)
    their positions (-1: padding or an empty slot); extra: None or a boolean (B, T, S) ANDed with
    the position rule (tree attention)."""

    k: Array
    v: Array
    pos: Array
    extra: Array | None = None


def attention_mask_from_positions(
    q_pos: Array, k_pos: Array, causal: bool | Array, window: Array | int
) -> Array:
    """Boolean (batch, q, k): which keys each query may see.

    k_pos = -1 marks padding or empty cache slots. window = 0 means full attention; otherwise
    a key is visible only when q_pos - k_pos < window (Mistral / Qwen2 sliding window).
    """
    qp = q_pos[:, :, None]
    kp = k_pos[:, None, :]
    ok = (kp >= 0) & (~jnp.asarray(causal, bool) | (kp <= qp))
    window = jnp.asarray(window)
    ok &= (window <= 0) | (qp - kp < window)
    return ok


def _segment_mask(seg: Segment, q_pos: Array, causal, window) -> Array:
    m = attention_mask_from_positions(q_pos, seg.pos, causal, window)
    return m if seg.extra is None else m & seg.extra


# --------------------------------------------------------------------------- which path
def resolve_attention(config: ModelConfig, *, q_len: int, kv_len: int, cached: bool = False,
                      tree_mask: bool = False, backend: str | None = None) -> str:
    """The implementation that `config.attention` gives a call of q_len queries over kv_len keys
    (cached: the call writes a KV cache; tree_mask: an extra key mask is given)."""
    impl = config.attention
    backend = backend or jax.default_backend()
    long = q_len > config.attention_chunk
    fused_ok = not cached and not tree_mask and q_len > 1
    if impl == "xla":
        return "xla"
    if impl == "chunked":
        return "chunked" if long else "xla"
    if impl == "cudnn":
        if backend not in ("gpu", "cuda", "rocm"):
            raise ConfigError(f"model.attention='cudnn' needs a GPU (the jax backend is {backend}); "
                              "use 'auto', 'xla' or 'chunked'")
        return "cudnn" if fused_ok else "xla"
    if impl == "splash":
        return "splash" if fused_ok else "xla"
    # auto
    if fused_ok and backend in ("gpu", "cuda") and config.dtype in ("bfloat16", "float16") \
            and config.head_dim % 8 == 0 and config.head_dim <= 128:
        return "cudnn"
    if fused_ok and backend == "tpu" and q_len >= 128:
        return "splash"
    return "chunked" if long and q_len >= AUTO_CHUNKED_MIN_QUERIES else "xla"


def attention(q: Array, segments: list[Segment], q_pos: Array, causal, window, *, config: ModelConfig,
              cached: bool = False) -> tuple[Array, Array]:
    """Softmax attention of q (B, T, H, D) (rotary applied) over `segments`, in order, each key
    visible by the position rule (q_pos (B, T), causal, window) and its extra mask; scores scaled
    by head_dim ** -0.5. Returns (out (B, T, H, D) in q's dtype, attn_last (B, H, keys): the newest
    query's attention probabilities, float32, no gradient). The implementation is
    `resolve_attention`'s for config.attention."""
    B, T, H, D = q.shape
    k0 = segments[0].k
    Hkv = k0.shape[1] if k0.ndim == 4 else k0.shape[0] // B
    G = H // Hkv
    S = sum(s.pos.shape[-1] for s in segments)
    scale = D ** -0.5
    impl = resolve_attention(config, q_len=T, kv_len=S, cached=cached,
                             tree_mask=any(s.extra is not None for s in segments))
    q5 = q.transpose(0, 2, 1, 3).reshape(B, Hkv, G, T, D)
    if impl == "xla":
        # queries head-major with the G query heads of a KV head merged into the rows,
        # (B, Hkv, G * T, D): every attention matmul is then a plain batched GEMM over (B, Hkv)
        masks = tuple(_segment_mask(s, q_pos, causal, window) for s in segments)
        out, probs = attend(q5.reshape(B, Hkv, G * T, D), tuple(s.k for s in segments),
                            tuple(s.v for s in segments), masks, G, scale)
        out = out.reshape(B, H, T, D).transpose(0, 2, 1, 3)
        return out, jax.lax.stop_gradient(probs[:, :, :, -1, :]).reshape(B, H, -1)
    last = newest_query_probs(q5[:, :, :, -1:], segments, q_pos[:, -1:], causal, window, scale)
    if impl == "chunked":
        out = attend_chunked(q5, tuple(_heads4(s.k, B) for s in segments), tuple(_heads4(s.v, B) for s in segments),
                             q_pos, tuple(s.pos for s in segments), tuple(s.extra for s in segments),
                             jnp.asarray(causal, bool), jnp.asarray(window, jnp.int32), scale,
                             int(config.attention_chunk))
        return out.reshape(B, H, T, D).transpose(0, 2, 1, 3), last
    if impl == "cudnn":
        if config.attention == "auto":  # a shape or version cuDNN refuses while tracing: the reference
            try:
                return attend_dot_product(q, segments, q_pos, causal, window, scale, "cudnn"), last
            except (ValueError, NotImplementedError, RuntimeError) as e:
                _warn_once(f"model.attention=auto: cuDNN attention refused this call ({e}); using xla")
                return attention(q, segments, q_pos, causal, window, config=config.replace(attention="xla"))
        return attend_dot_product(q, segments, q_pos, causal, window, scale, "cudnn"), last
    return attend_splash(q, segments, causal, window, scale, windows=tuple(config.layer_windows)), last


@functools.lru_cache(maxsize=None)
def _warn_once(msg: str) -> None:
    warnings.warn(msg, stacklevel=3)


def _heads4(a: Array, B: int) -> Array:
    """(B * Hkv, S, D) -> (B, Hkv, S, D); 4-D arrays unchanged."""
    return a if a.ndim == 4 else a.reshape((B, -1) + a.shape[1:])


def newest_query_probs(q_last: Array, segments: list[Segment], q_pos_last: Array, causal, window,
                       scale: float) -> Array:
    """The attention probabilities (B, H, keys) of the newest query q_last (B, Hkv, G, 1, D) over
    `segments` (float32, no gradient): the row the xla path returns, for the others."""
    B, Hkv, G = q_last.shape[:3]
    scores = []
    for s in segments:
        k = _heads4(s.k, B)
        sc = jnp.einsum("bkgqd,bksd->bkgqs", q_last, k, preferred_element_type=jnp.float32) * scale
        extra = None if s.extra is None else s.extra[:, -1:]
        m = _segment_mask(Segment(k, s.v, s.pos, extra), q_pos_last, causal, window)
        scores.append(jnp.where(m[:, None, None], sc, _BIG_NEG))
    p = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1)
    return jax.lax.stop_gradient(p.reshape(B, Hkv * G, -1))


# ------------------------------------------------------------------------ xla (reference)
def _dot(eq3: str, eq4: str, a: Array, b: Array, **kw) -> Array:
    """A batched matmul over (B * Hkv, ...) (eq3) or (B, Hkv, ...) (eq4) operands: keys / values
    from a layer-split cache are (B * Hkv, S, D) and are read as they are stored (a reshape
    between the cache buffer and the dot makes XLA:CPU duplicate the in-place update)."""
    if b.ndim == 3:
        lead = a.shape[:2]
        out = jnp.einsum(eq3, a.reshape((-1,) + a.shape[2:]), b, **kw)
        return out.reshape(lead + out.shape[1:])
    return jnp.einsum(eq4, a, b, **kw)


def _attend_fwd_core(q, ks, vs, masks, G, scale):
    """Softmax attention of q (B, Hkv, G * T, D), scores scaled by `scale`, over the concatenation of the
    key segments ks[i] (B, Hkv, S_i, D) or (B * Hkv, S_i, D) with boolean masks (B, T, S_i).
    Returns out (B, Hkv, G * T, D) in q's dtype and probs (B, Hkv, G, T, sum S_i), float32."""
    B, Hkv, GT, _ = q.shape
    T = GT // G
    scores = []
    for k, m in zip(ks, masks):
        sc = _dot("nqd,nsd->nqs", "bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32)
        sc = sc.reshape(B, Hkv, G, T, -1) * scale
        scores.append(jnp.where(m[:, None, None], sc, _BIG_NEG))
    sc = scores[0] if len(scores) == 1 else jnp.concatenate(scores, axis=-1)
    probs = jax.nn.softmax(sc, axis=-1)
    pm = probs.reshape(B, Hkv, GT, -1)
    out, at = None, 0
    for v in vs:
        S = v.shape[-2]
        o = _dot("nqs,nsd->nqd", "bkqs,bksd->bkqd", pm[..., at:at + S].astype(v.dtype), v)
        out = o if out is None else out + o
        at += S
    return out.astype(q.dtype), probs


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def attend(q, ks, vs, masks, G, scale):
    """`_attend_fwd_core` with a hand-written backward: the gradients are five batched matmuls
    and one elementwise pass over the probabilities (dS = P * (dP - rowsum(dO * O)), zero where
    masked), instead of autodiff's chain through the mask, the softmax's normalisation and the
    transposes XLA:CPU inserts around each dot. probs carries no gradient (it is read only by
    decoding heuristics)."""
    return _attend_fwd_core(q, ks, vs, masks, G, scale)


def _attend_fwd(q, ks, vs, masks, G, scale):
    out, probs = _attend_fwd_core(q, ks, vs, masks, G, scale)
    return (out, probs), (q, ks, vs, masks, probs, out)


def _attend_bwd(G, scale, res, cts):
    q, ks, vs, masks, probs, out = res
    d_out = cts[0]
    B, Hkv, GT, _ = q.shape
    T = GT // G
    f32 = jnp.float32
    delta = jnp.sum(d_out.astype(f32) * out.astype(f32), axis=-1).reshape(B, Hkv, G, T, 1)
    dq = None
    dks, dvs = [], []
    at = 0
    for k, v, m in zip(ks, vs, masks):
        S = k.shape[-2]
        p = probs[..., at:at + S]
        at += S
        dp = _dot("nqd,nsd->nqs", "bkqd,bksd->bkqs", d_out, v, preferred_element_type=f32).reshape(B, Hkv, G, T, S)
        ds = jnp.where(m[:, None, None], p * (dp - delta) * scale, 0.0).reshape(B, Hkv, GT, S)
        pm = p.reshape(B, Hkv, GT, S).astype(v.dtype)
        dv = _dot("nqs,nqd->nsd", "bkqs,bkqd->bksd", pm, d_out)
        dk = _dot("nqs,nqd->nsd", "bkqs,bkqd->bksd", ds.astype(q.dtype), q)
        if v.ndim == 3:
            dv, dk = dv.reshape(v.shape), dk.reshape(k.shape)
        dvs.append(dv.astype(v.dtype))
        dks.append(dk.astype(k.dtype))
        dqi = _dot("nqs,nsd->nqd", "bkqs,bksd->bkqd", ds.astype(k.dtype), k)
        dq = dqi if dq is None else dq + dqi
    return dq.astype(q.dtype), tuple(dks), tuple(dvs), tuple(None for _ in masks)


attend.defvjp(_attend_fwd, _attend_bwd)


# ------------------------------------------------------------------------------ chunked
def _blocks(a: Array, axis: int, nb: int, bq: int, fill=0) -> Array:
    """a's `axis` (length <= nb * bq) padded with `fill` and split into nb blocks, block index first."""
    pad = nb * bq - a.shape[axis]
    if pad:
        widths = [(0, 0)] * a.ndim
        widths[axis] = (0, pad)
        a = jnp.pad(a, widths, constant_values=fill)
    a = a.reshape(a.shape[:axis] + (nb, bq) + a.shape[axis + 1:])
    return jnp.moveaxis(a, axis, 0)


def _unblock(a: Array, axis: int, T: int) -> Array:
    """Inverse of _blocks for an array whose block index is first and block rows at `axis` + 1."""
    a = jnp.moveaxis(a, 0, axis)
    a = a.reshape(a.shape[:axis] + (-1,) + a.shape[axis + 2:])
    return jax.lax.slice_in_dim(a, 0, T, axis=axis)


def _block_scores(qb, ks, kps, exs, qpb, causal, window, scale):
    """Masked scores (B, Hkv, G, bq, S_i) of one query block against each segment, and the masks."""
    out, masks = [], []
    for k, kp, ex in zip(ks, kps, exs):
        m = attention_mask_from_positions(qpb, kp, causal, window)
        if ex is not None:
            m = m & ex
        sc = jnp.einsum("bkgqd,bksd->bkgqs", qb, k, preferred_element_type=jnp.float32) * scale
        out.append(jnp.where(m[:, None, None], sc, _BIG_NEG))
        masks.append(m)
    return out, masks


def _chunked_split(q, q_pos, exs, block):
    B, Hkv, G, T, D = q.shape
    nb = -(-T // block)
    qb = _blocks(q, 3, nb, block)
    qpb = _blocks(q_pos, 1, nb, block)
    exb = tuple(None if e is None else _blocks(e, 1, nb, block, False) for e in exs)
    return nb, qb, qpb, exb


def _chunked_fwd_core(q, ks, vs, q_pos, kps, exs, causal, window, scale, block):
    T = q.shape[3]
    nb, qb, qpb, exb = _chunked_split(q, q_pos, exs, block)

    def one(args):
        qi, qpi, exi = args
        scores, _ = _block_scores(qi, ks, kps, exi, qpi, causal, window, scale)
        s = scores[0] if len(scores) == 1 else jnp.concatenate(scores, axis=-1)
        mx = jnp.max(s, axis=-1, keepdims=True)
        e = jnp.exp(s - mx)
        tot = jnp.sum(e, axis=-1, keepdims=True)
        p = e / tot
        o, at = None, 0
        for v in vs:
            S = v.shape[-2]
            oi = jnp.einsum("bkgqs,bksd->bkgqd", p[..., at:at + S].astype(v.dtype), v)
            o = oi if o is None else o + oi
            at += S
        return o.astype(q.dtype), mx[..., 0], tot[..., 0]

    o, mx, tot = jax.lax.map(one, (qb, qpb, exb))
    return _unblock(o, 3, T), _unblock(mx, 3, T), _unblock(tot, 3, T)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def attend_chunked(q, ks, vs, q_pos, k_pos, extras, causal, window, scale, block):
    """Softmax attention of q (B, Hkv, G, T, D) over the key segments ks[i], vs[i] (B, Hkv, S_i, D)
    with positions k_pos[i] (B, S_i) and extra masks extras[i] (None or (B, T, S_i)), by the
    position rule (q_pos (B, T), causal, window), scores scaled by `scale`, computed over blocks of
    `block` queries. Returns out (B, Hkv, G, T, D) in q's dtype, equal to `attend`'s. The backward
    recomputes each block's probabilities from the saved row max and sum (flash attention's
    residuals), so no (T, keys) array of any head is stored."""
    return _chunked_fwd_core(q, ks, vs, q_pos, k_pos, extras, causal, window, scale, block)[0]


def _chunked_fwd(q, ks, vs, q_pos, k_pos, extras, causal, window, scale, block):
    out, mx, tot = _chunked_fwd_core(q, ks, vs, q_pos, k_pos, extras, causal, window, scale, block)
    return out, (q, ks, vs, q_pos, k_pos, extras, causal, window, out, mx, tot)


def _chunked_bwd(scale, block, res, d_out):
    q, ks, vs, q_pos, kps, exs, causal, window, out, mx, tot = res
    f32 = jnp.float32
    T = q.shape[3]
    delta = jnp.sum(d_out.astype(f32) * out.astype(f32), axis=-1)  # (B, Hkv, G, T)
    nb, qb, qpb, exb = _chunked_split(q, q_pos, exs, block)
    dob = _blocks(d_out, 3, nb, block)
    deltab, mxb, totb = (_blocks(a, 3, nb, block, 1) for a in (delta, mx, tot))

    def body(carry, xs):
        dks, dvs = carry
        qi, qpi, exi, doi, di, mi, ti = xs
        scores, masks = _block_scores(qi, ks, kps, exi, qpi, causal, window, scale)
        dq, new_dk, new_dv = None, [], []
        for s, m, k, v, dk, dv in zip(scores, masks, ks, vs, dks, dvs):
            p = jnp.exp(s - mi[..., None]) / ti[..., None]
            dp = jnp.einsum("bkgqd,bksd->bkgqs", doi, v, preferred_element_type=f32)
            ds = jnp.where(m[:, None, None], p * (dp - di[..., None]) * scale, 0.0)
            new_dv.append(dv + jnp.einsum("bkgqs,bkgqd->bksd", p.astype(v.dtype), doi, preferred_element_type=f32))
            new_dk.append(dk + jnp.einsum("bkgqs,bkgqd->bksd", ds.astype(q.dtype), qi, preferred_element_type=f32))
            dqi = jnp.einsum("bkgqs,bksd->bkgqd", ds.astype(k.dtype), k, preferred_element_type=f32)
            dq = dqi if dq is None else dq + dqi
        return (tuple(new_dk), tuple(new_dv)), dq

    zeros = lambda xs: tuple(jnp.zeros(x.shape, f32) for x in xs)
    (dks, dvs), dqb = jax.lax.scan(body, (zeros(ks), zeros(vs)), (qb, qpb, exb, dob, deltab, mxb, totb))
    dq = _unblock(dqb, 3, T).astype(q.dtype)
    return (dq, tuple(d.astype(k.dtype) for d, k in zip(dks, ks)), tuple(d.astype(v.dtype) for d, v in zip(dvs, vs)),
            None, tuple(None for _ in kps), tuple(None for _ in exs), None, None)


attend_chunked.defvjp(_chunked_fwd, _chunked_bwd)


# -------------------------------------------------------------------------------- cudnn
def attend_dot_product(q: Array, segments: list[Segment], q_pos: Array, causal, window, scale: float,
                       implementation: str = "cudnn") -> Array:
    """jax.nn.dot_product_attention of q (B, T, H, D) over the concatenated segments with the exact
    position mask (B, 1, T, keys); out (B, T, H, D). implementation="cudnn" is the GPU kernel
    (bf16 / fp16); "xla" runs the same call anywhere (the tests check this layout with it)."""
    B = q.shape[0]
    mask = jnp.concatenate([_segment_mask(s, q_pos, causal, window) for s in segments], axis=-1)
    slot_major = lambda a: jnp.swapaxes(_heads4(a, B), 1, 2).astype(q.dtype)  # (B, S, Hkv, D)
    k = jnp.concatenate([slot_major(s.k) for s in segments], axis=1)
    v = jnp.concatenate([slot_major(s.v) for s in segments], axis=1)
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=scale, implementation=implementation)


# ------------------------------------------------------------------------------- splash
def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def splash_geometry(q_len: int, kv_len: int, block: int = SPLASH_BLOCK) -> tuple[int, int, int, int]:
    """(padded queries, padded keys, query block, key block) of a splash call: each block a
    multiple of 128 no larger than `block`, each length a multiple of its block."""
    bq = min(block, _round_up(q_len, 128))
    bkv = min(block, _round_up(kv_len, 128))
    return _round_up(q_len, bq), _round_up(kv_len, bkv), bq, bkv


def splash_window(window: int, offset: int, q_len: int) -> int:
    """The window splash needs: 0 where `window` never excludes a key of this call (0, or not
    smaller than the largest query-key distance, offset + q_len)."""
    return 0 if window <= 0 or window >= offset + q_len else int(window)


def splash_mask(q_len: int, kv_len: int, offset: int, causal: bool, window: int):
    """The splash index mask (splash_attention.LocalMask, or FullMask) of q_len queries over kv_len keys whose
    first query is key `offset`: key j visible to query i when j <= i + offset (causal) and
    i + offset - j < window (window > 0). With segment ids for padding it equals the position rule
    when the real keys hold consecutive positions in index order (see the module docstring)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    if window <= 0 and not causal:
        return sa.FullMask((q_len, kv_len))
    left = window - 1 if window > 0 else None
    return sa.LocalMask((q_len, kv_len), (left, 0 if causal else None), offset)


def splash_dense_mask(q_len: int, k_pos: Array, offset: int, causal: bool, window: int) -> np.ndarray:
    """What a splash call sees, as a boolean (B, q_len, keys): `splash_mask` ANDed with the
    segment-id rule (a key is seen only when it is real, k_pos >= 0). For tests of the mask
    construction on machines where the kernel itself is not run."""
    S = k_pos.shape[-1]
    m = np.asarray(splash_mask(q_len, S, offset, causal, splash_window(window, offset, q_len))[0:q_len, 0:S])
    return m[None] & (np.asarray(k_pos) >= 0)[:, None, :]


@functools.lru_cache(maxsize=64)
def _splash_kernel(heads: int, q_len: int, kv_len: int, offset: int, causal: bool, window: int, bq: int, bkv: int,
                   interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    mask = sa.MultiHeadMask([splash_mask(q_len, kv_len, offset, causal, window)] * heads)
    sizes = sa.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq, block_kv_dkv=bkv,
                          block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)
    with jax.ensure_compile_time_eval():  # its mask tables are constants, never tracers of the calling trace
        return sa.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _static(x, conv):
    """conv(x) when x is concrete, else None (a traced value)."""
    try:
        return conv(x)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError,
            jax.errors.TracerIntegerConversionError):
        return None


def attend_splash(q: Array, segments: list[Segment], causal, window, scale: float, *,
                  windows: tuple[int, ...] = (0,), block: int = SPLASH_BLOCK, interpret: bool | None = None) -> Array:
    """Pallas splash attention of q (B, T, H, D) over the concatenated segments (the queries are the
    last T keys): index masks (`splash_mask`, offset by the keys before the queries) and segment
    ids (real keys 1, padding 0); out (B, T, H, D). `windows`: every window value `window` may take
    (the config's layer_windows), for a traced window; a traced `causal` chooses between the causal
    and the bidirectional kernel (lax.switch). Lengths are padded to the blocks. Under a mesh the
    kernel runs per device (shard_map over the batch axes, KV heads over 'tensor' when they split).
    interpret: Pallas interpret mode (default: off on TPU only)."""
    B, T, H, D = q.shape
    k = jnp.concatenate([_heads4(s.k, B).astype(q.dtype) for s in segments], axis=2)  # (B, Hkv, S, D)
    v = jnp.concatenate([_heads4(s.v, B).astype(q.dtype) for s in segments], axis=2)
    k_pos = jnp.concatenate([s.pos for s in segments], axis=-1)
    Hkv, S = k.shape[1], k.shape[2]
    offset = S - T
    Tp, Sp, bq, bkv = splash_geometry(T, S, block)
    if interpret is None:
        interpret = jax.default_backend() != "tpu"
    qh = (q.astype(jnp.float32) * scale).astype(q.dtype).transpose(0, 2, 1, 3)
    qh = jnp.pad(qh, ((0, 0), (0, 0), (0, Tp - T), (0, 0)))
    k = jnp.pad(k, ((0, 0), (0, 0), (0, Sp - S), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, 0), (0, Sp - S), (0, 0)))
    kv_seg = jnp.pad((k_pos >= 0).astype(jnp.int32), ((0, 0), (0, Sp - S)))
    q_seg = jnp.ones((B, Tp), jnp.int32)

    c_static = _static(causal, bool)
    w_static = _static(window, int)
    causals = (c_static,) if c_static is not None else (True, False)
    wins = ((splash_window(w_static, offset, T),) if w_static is not None
            else tuple(sorted({splash_window(int(w), offset, T) for w in windows})))
    variants = [(c, w) for c in causals for w in wins]
    if len(variants) == 1:
        index = jnp.zeros((), jnp.int32)
    else:
        w_eff = jnp.asarray(window, jnp.int32)
        w_eff = jnp.where((w_eff <= 0) | (w_eff >= offset + T), 0, w_eff)
        c_idx = jnp.where(jnp.asarray(causal, bool), 0, 1) if len(causals) > 1 else 0
        w_idx = sum(jnp.where(w_eff == w, i, 0) for i, w in enumerate(wins))
        index = (c_idx * len(wins) + w_idx).astype(jnp.int32)

    def run(index, qh, k, v, q_seg, kv_seg):
        from jax.experimental.pallas.ops.tpu import splash_attention as sa

        def branch(c, w):
            kern = _splash_kernel(qh.shape[1], Tp, Sp, offset, c, w, bq, bkv, bool(interpret))
            return lambda *a: jax.vmap(lambda q1, k1, v1, qs, ks: kern(q1, k1, v1, segment_ids=sa.SegmentIds(qs, ks)))(*a)

        fns = [branch(c, w) for c, w in variants]
        args = (qh, k, v, q_seg, kv_seg)
        return fns[0](*args) if len(fns) == 1 else jax.lax.switch(index, fns, *args)

    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        rules = current_rules()
        b_ax = spec_for(("batch",), (B,), mesh, rules)[0]
        t = mesh.shape.get("tensor", 1)
        h_ax = "tensor" if t > 1 and Hkv % t == 0 else None
        heads, seg = P(b_ax, h_ax, None, None), P(b_ax, None)
        run = jax.shard_map(run, mesh=mesh, in_specs=(P(), heads, heads, heads, seg, seg), out_specs=heads,
                            check_vma=False)
    out = run(index, qh, k, v, q_seg, kv_seg)
    return out[:, :, :T].transpose(0, 2, 1, 3).astype(q.dtype)
