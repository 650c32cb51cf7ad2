"""HiCo: hierarchical video token compression (VideoChat-Flash, arXiv 2501.00574).

1. Clip-level merging (`merge_clip_tokens`): the visual tokens of every `clip_frames`
   consecutive frames are merged by repeated bipartite soft matching (ToMe): tokens are split
   alternately into sets A and B, each A token is matched to its most cosine-similar B token,
   and the r best-matched A tokens are merged into their partners (size-weighted averages),
   until the clip holds `tokens_per_frame * clip_frames` tokens. Merged tokens keep the order
   of their earliest member, so the temporal order survives.
2. Video-level dropping (`select_video_tokens`, used by
   latent_jax.models.multimodal.forward_with_token_drop): at chosen LM layers a fraction of
   the video tokens is dropped, evenly spaced ('uniform') or the least attended by the last
   query ('attention').

All functions are pure jnp with static shapes (counts are Python ints), so they jit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def bipartite_merge(x: Array, size: Array, first: Array, r: int) -> tuple[Array, Array, Array]:
    """One ToMe round on (n, D) tokens: merge r tokens of A = x[0::2] into B = x[1::2].

    size (n,) counts the original tokens each row stands for (x holds their mean); first (n,)
    the earliest original index. Returns (x, size, first) with n - r rows."""
    a, b = x[0::2], x[1::2]
    sa, sb = size[0::2], size[1::2]
    fa, fb = first[0::2], first[1::2]
    r = min(r, a.shape[0])
    if r <= 0 or b.shape[0] == 0:
        return x, size, first
    an = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    bn = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    sim = an @ bn.T
    best = jnp.max(sim, axis=-1)
    dst = jnp.argmax(sim, axis=-1)
    order = jnp.argsort(-best, stable=True)
    src, keep = order[:r], order[r:]
    dst_src = dst[src]
    wsum = (b * sb[:, None]).at[dst_src].add(a[src] * sa[src][:, None])
    nsize = sb.at[dst_src].add(sa[src])
    nfirst = fb.at[dst_src].min(fa[src])
    b_new = wsum / nsize[:, None]
    x = jnp.concatenate([a[keep], b_new.astype(x.dtype)])
    return x, jnp.concatenate([sa[keep], nsize]), jnp.concatenate([fa[keep], nfirst])


def merge_tokens(x: Array, target: int) -> tuple[Array, Array]:
    """Merge (n, D) tokens down to `target` by repeated bipartite matching; returns
    (tokens (target, D) in order of their earliest member, sizes (target,))."""
    n = x.shape[0]
    if target >= n:
        return x, jnp.ones((n,), x.dtype)
    if target <= 0:
        raise ValueError(f"HiCo target token count must be positive, got {target}")
    size = jnp.ones((n,), jnp.float32)
    first = jnp.arange(n, dtype=jnp.int32)
    x32 = x.astype(jnp.float32)
    while x32.shape[0] > target:
        r = min(x32.shape[0] - target, (x32.shape[0] + 1) // 2)
        x32, size, first = bipartite_merge(x32, size, first, r)
    order = jnp.argsort(first)
    return x32[order].astype(x.dtype), size[order]


def merge_clip_tokens(frames: Array, tokens_per_frame: int, clip_frames: int = 4) -> Array:
    """(F, N, D) per-frame tokens -> (F, tokens_per_frame, D): every clip of `clip_frames`
    consecutive frames (the last clip may be shorter) is merged as one set."""
    F_, N, D = frames.shape
    if tokens_per_frame >= N:
        return frames
    outs = []
    for s in range(0, F_, clip_frames):
        clip = frames[s : s + clip_frames]
        c = clip.shape[0]
        merged, _ = merge_tokens(clip.reshape(c * N, D), c * tokens_per_frame)
        outs.append(merged.reshape(c, tokens_per_frame, D))
    return jnp.concatenate(outs)


def compression_ratio(tokens_before: int, tokens_after: int) -> float:
    """How many times fewer tokens the LM sees (e.g. 4.0 = 4x fewer)."""
    return float(tokens_before) / float(max(tokens_after, 1))


def select_video_tokens(video_mask: Array, keep_ratio: float, mode: str = "uniform", attn: Array | None = None,
                        num_video: int | None = None) -> Array:
    """Indices (B, T') of the positions to keep when dropping video tokens.

    video_mask (B, T) marks the video tokens (every row must hold the same number,
    `num_video`, a Python int; taken from a concrete mask when omitted). Non-video positions
    are always kept. 'uniform' keeps evenly spaced video tokens; 'attention' the ones with
    the largest head-averaged attention from the last query in `attn` (B, H, T)."""
    B, T = video_mask.shape
    if num_video is None:
        counts = np.asarray(video_mask).sum(-1)
        if len(set(counts.tolist())) != 1:
            raise ValueError("video token dropping needs the same number of video tokens in every row")
        num_video = int(counts[0])
    n_keep = max(1, int(round(num_video * keep_ratio)))
    n_drop = num_video - n_keep
    vm = jnp.asarray(video_mask, bool)
    if mode == "uniform":
        rank = jnp.cumsum(vm, axis=-1) - 1
        kept = jnp.asarray(np.unique(np.round(np.linspace(0, num_video - 1, n_keep)).astype(np.int32)))
        score = jnp.isin(rank, kept).astype(jnp.float32)
    elif mode == "attention":
        if attn is None:
            raise ValueError("attention-based dropping needs the previous layer's attention (drop at layer >= 1)")
        score = jnp.mean(attn, axis=1)
    else:
        raise ValueError(f"unknown token drop mode {mode!r}; use uniform or attention")
    score = jnp.where(vm, score, jnp.inf)
    _, idx = jax.lax.top_k(score, T - n_drop)
    return jnp.sort(idx, axis=-1)
