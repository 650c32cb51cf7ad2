"""Autoregressive generation: prefill once, then one jitted lax.while_loop over new tokens.

Greedy, temperature, top-k and top-p sampling; per-row stop tokens; batched left-padded
prompts of different lengths. The loop stops as soon as every row has stopped.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from latent_jax.models.config import ModelConfig
from latent_jax.models.decoder import Decoder
from latent_jax.models.layers import KVCache

Array = jax.Array


@flax.struct.dataclass
class SamplingParams:
    """Traced sampling knobs (changing them does not recompile). temperature 0 = greedy."""

    temperature: Array | float = 0.0
    top_p: Array | float = 1.0

    @classmethod
    def make(cls, temperature: float = 0.0, top_p: float = 1.0) -> "SamplingParams":
        return cls(jnp.float32(temperature), jnp.float32(top_p))


def sample_logits(logits: Array, rng: Array, sp: SamplingParams, top_k: int = 0) -> Array:
    """Next tokens (B,) from logits (B, V): argmax when temperature == 0, otherwise
    temperature-scaled sampling restricted to the top_k tokens (0 = all) and the top_p
    nucleus (the smallest set whose probability reaches top_p; the top token always kept)."""
    logits = logits.astype(jnp.float32)
    greedy = jnp.argmax(logits, axis=-1)
    t = jnp.maximum(sp.temperature, 1e-6)
    scaled = logits / t
    neg = jnp.finfo(jnp.float32).min
    if top_k:
        kth = jax.lax.top_k(scaled, top_k)[0][..., -1:]
        scaled = jnp.where(scaled < kth, neg, scaled)
    sorted_logits = jnp.sort(scaled, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    cum_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = cum_before < sp.top_p
    keep_sorted = keep_sorted.at[..., 0].set(True)
    cutoff = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    scaled = jnp.where(scaled < cutoff, neg, scaled)
    sampled = jax.random.categorical(rng, scaled, axis=-1)
    return jnp.where(sp.temperature > 0, sampled, greedy).astype(jnp.int32)


@flax.struct.dataclass
class GenerateOutput:
    """tokens (B, max_new) new tokens, pad_id after a row stopped; lengths (B,) new tokens per
    row including the stop token; steps () decode forward passes run after the prefill."""

    tokens: Array
    lengths: Array
    steps: Array


def _is_stop(tok: Array, stop_ids: Array) -> Array:
    if stop_ids.shape[0] == 0:
        return jnp.zeros(tok.shape, bool)
    return jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "top_k", "cache_dtype"))
def generate(
    params: dict,
    input_ids: Array,
    attention_mask: Array,
    rng: Array,
    sp: SamplingParams,
    stop_ids: Array,
    *,
    config: ModelConfig,
    max_new_tokens: int,
    top_k: int = 0,
    pad_id: int = 0,
    cache_dtype: str | None = None,
) -> GenerateOutput:
    """Generate up to max_new_tokens for left-padded prompts (B, T).

    The prompt is prefilled once into a KV cache of T + max_new_tokens slots; each step of
    the while_loop decodes one token per row at that row's own position.
    """
    model = Decoder(config)
    B, T = input_ids.shape
    cache = KVCache.init(config, B, T + max_new_tokens, cache_dtype and jnp.dtype(cache_dtype))
    out = model.apply({"params": params}, input_ids, attention_mask=attention_mask, cache=cache)
    last_pos = jnp.sum(attention_mask, axis=-1).astype(jnp.int32) - 1
    rng, sub = jax.random.split(rng)
    tok = sample_logits(out.logits[:, -1], sub, sp, top_k)
    tokens = jnp.full((B, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(tok)
    done = _is_stop(tok, stop_ids)
    lengths = jnp.ones((B,), jnp.int32)

    # the loop state: (step, last token, cache, last position, done, tokens, lengths, rng)
    def cond_fn(s):
        return (s[0] < max_new_tokens) & ~jnp.all(s[4])

    def body_fn(s):
        i, tok, cache, pos, done, tokens, lengths, rng = s
        pos = pos + 1
        o = model.apply(
            {"params": params}, tok[:, None], positions=pos[:, None], cache=cache
        )
        rng, sub = jax.random.split(rng)
        nxt = sample_logits(o.logits[:, -1], sub, sp, top_k)
        nxt = jnp.where(done, pad_id, nxt)
        tokens = tokens.at[:, i].set(nxt)
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | _is_stop(nxt, stop_ids)
        return (i + 1, nxt, o.cache, pos, done, tokens, lengths, rng)

    init = (jnp.int32(1), tok, out.cache, last_pos, done, tokens, lengths, rng)
    i, _, _, _, _, tokens, lengths, _ = jax.lax.while_loop(cond_fn, body_fn, init)
    return GenerateOutput(tokens=tokens, lengths=lengths, steps=i - 1)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0, bucket: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists to a common length (rounded up to a multiple of `bucket`, so that
    prompts of similar lengths share one compiled program). Returns (ids, mask)."""
    n = max(len(p) for p in prompts)
    n = -(-n // bucket) * bucket
    ids = np.full((len(prompts), n), pad_id, np.int32)
    mask = np.zeros((len(prompts), n), np.int32)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, n - len(p):] = p
            mask[i, n - len(p):] = 1
    return ids, mask


def trim_output(out: GenerateOutput) -> list[list[int]]:
    """Per-row lists of new tokens (the stop token included when one was produced)."""
    toks = np.asarray(out.tokens)
    lens = np.asarray(out.lengths)
    return [toks[i, : lens[i]].tolist() for i in range(toks.shape[0])]
