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
from latent_jax.parallel import to_host

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

    def greedy(_):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sample(_):
        scaled = logits / jnp.maximum(sp.temperature, 1e-6)
        neg = jnp.finfo(jnp.float32).min
        if top_k:
            kth = jax.lax.top_k(scaled, top_k)[0][..., -1:]
            scaled = jnp.where(scaled < kth, neg, scaled)

        def nucleus(x):
            sorted_logits = jnp.sort(x, axis=-1)[..., ::-1]
            probs = jax.nn.softmax(sorted_logits, axis=-1)
            keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < sp.top_p
            keep_sorted = keep_sorted.at[..., 0].set(True)
            cutoff = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
            return jnp.where(x < cutoff, neg, x)

        # the vocabulary sort only runs when a nucleus is asked for
        scaled = jax.lax.cond(sp.top_p < 1.0, nucleus, lambda x: x, scaled)
        return jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)

    # only the chosen branch runs: greedy decoding pays for no sampling work
    return jax.lax.cond(sp.temperature > 0, sample, greedy, None)


@flax.struct.dataclass
class GenerateOutput:
    """tokens (B, max_new) new tokens, pad_id after a row stopped; lengths (B,) new tokens per
    row including the stop token; steps () decode forward passes run after the prefill."""

    tokens: Array
    lengths: Array
    steps: Array


def is_stop(tok: Array, stop_ids: Array) -> Array:
    """Boolean (B,): whether each token of tok (B,) is one of stop_ids (S,) (none when S == 0)."""
    if stop_ids.shape[0] == 0:
        return jnp.zeros(tok.shape, bool)
    return jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)


def emit_token(logits: Array, rng: Array, sp: SamplingParams, top_k: int, i: Array, done: Array,
               tokens: Array, lengths: Array, stop_ids: Array, pad_id: int):
    """One decode step's bookkeeping, shared by every decoding loop: sample the next token
    from logits (B, V), write it at column i of tokens (pad_id for rows already done), count
    it, and mark rows that produced a stop token. Returns (next, tokens, lengths, done, rng).
    The rng is split only when sampling (greedy never reads it): the split's threefry rounds
    are a few dozen small XLA:CPU ops per step."""
    rng, sub = jax.lax.cond(sp.temperature > 0, lambda r: tuple(jax.random.split(r)), lambda r: (r, r), rng)
    nxt = jnp.where(done, pad_id, sample_logits(logits, sub, sp, top_k))
    tokens = tokens.at[:, i].set(nxt)
    lengths = lengths + (~done).astype(jnp.int32)
    return nxt, tokens, lengths, done | is_stop(nxt, stop_ids), rng


@flax.struct.dataclass
class DecodeState:
    """The while_loop state of every token-by-token decode loop: sampling's `decode_loop`
    (plain, Coconut after its thoughts, VLM after its media prefill) and TOVA's.

    step: () index of the next token to write in `tokens`; tok (B,) the last token; cache the
    KV cache; pos (B,) the last token's positions; done (B,); tokens (B, max_new); lengths (B,);
    rng. Longrope (decode_loop): long () whether the long factors are in use; input_ids /
    attention_mask the left-padded prompt, kept for Phi-3's one-time cache recompute. Eviction
    (TOVA): head_weights (B, L, H) and their momentum velocity. Fields a loop does not use are
    None."""

    step: Array
    tok: Array
    cache: KVCache
    pos: Array
    done: Array
    tokens: Array
    lengths: Array
    rng: Array
    long: Array | None = None
    input_ids: Array | None = None
    attention_mask: Array | None = None
    head_weights: Array | None = None
    velocity: Array | None = None

    @classmethod
    def start(cls, cache: KVCache, tok: Array, pos: Array, rng: Array, stop_ids: Array, *, max_new_tokens: int,
              pad_id: int, **fields) -> DecodeState:
        """The state after a prefill into `cache` that sampled the first token `tok` (B,) at
        positions `pos` (B,): one token written, rows that stopped on it done."""
        B = tok.shape[0]
        return cls(step=jnp.int32(1), tok=tok, cache=cache, pos=pos.astype(jnp.int32), done=is_stop(tok, stop_ids),
                   tokens=jnp.full((B, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(tok),
                   lengths=jnp.ones((B,), jnp.int32), rng=rng, **fields)


def needs_long_switch(config: ModelConfig, total_len: int) -> bool:
    """Whether a longrope model may cross original_max_position_embeddings within total_len."""
    return config.rope_type == "longrope" and total_len > (config.rope_original_max_position_embeddings or 0)


def prefill_state(params, input_ids, attention_mask, rng, sp, stop_ids, *, config, max_new_tokens, top_k,
                  pad_id, cache_dtype) -> DecodeState:
    """Traceable prefill (call inside jit; `prefill` is its jitted form): encode left-padded
    prompts (B, T) into a cache of T + max_new_tokens slots and sample the first new token."""
    model = Decoder(config)
    B, T = input_ids.shape
    cache = KVCache.init(config, B, T + max_new_tokens, cache_dtype and jnp.dtype(cache_dtype))
    out = model.apply({"params": params}, input_ids, attention_mask=attention_mask, cache=cache)
    last_pos = jnp.sum(attention_mask, axis=-1).astype(jnp.int32) - 1
    rng, sub = jax.random.split(rng)
    tok = sample_logits(out.logits[:, -1], sub, sp, top_k)
    orig = config.rope_original_max_position_embeddings or 0
    return DecodeState.start(out.cache, tok, last_pos, rng, stop_ids, max_new_tokens=max_new_tokens, pad_id=pad_id,
                             long=jnp.max(last_pos) + 1 > orig, input_ids=input_ids, attention_mask=attention_mask)


def decode_loop(params, state: DecodeState, sp, stop_ids, *, config, max_new_tokens, top_k, pad_id) -> GenerateOutput:
    """Traceable decode while_loop from a DecodeState (call inside jit; `decode` is its jitted
    form). Every caller that builds its own DecodeState (Coconut after its thoughts, VLM after
    its media prefill) continues with this loop, longrope's one-time recompute included."""
    model = Decoder(config)
    B, T = state.input_ids.shape
    switch = needs_long_switch(config, T + max_new_tokens)
    orig = config.rope_original_max_position_embeddings or 0

    def step_logits(s: DecodeState, pos: Array) -> tuple[Array, KVCache]:
        o = model.apply({"params": params}, s.tok[:, None], positions=pos[:, None], cache=s.cache)
        return o.logits[:, -1], o.cache

    def recompute_logits(s: DecodeState, pos: Array) -> tuple[Array, KVCache]:
        # transformers' Phi3ForCausalLM drops the cache the step the sequence first exceeds
        # original_max_position_embeddings and re-encodes everything with the long factors
        seq = jnp.concatenate([s.input_ids, s.tokens], axis=1)
        gen_mask = (jnp.arange(max_new_tokens) < s.step)[None, :]
        mask = jnp.concatenate([s.attention_mask, jnp.broadcast_to(gen_mask, s.tokens.shape)], axis=1)
        fresh = KVCache.init(config, B, s.cache.slots, s.cache.dtype)
        if s.cache.is_split:
            fresh = fresh.split_layers()
        o = model.apply({"params": params}, seq, attention_mask=mask.astype(jnp.int32), cache=fresh)
        logits = jax.lax.dynamic_index_in_dim(o.logits, T + s.step - 1, axis=1, keepdims=False)
        return logits, o.cache.replace(end=jnp.int32(T) + s.step)

    def cond_fn(s: DecodeState):
        return (s.step < max_new_tokens) & ~jnp.all(s.done)

    def body_fn(s: DecodeState):
        pos = s.pos + 1
        long = s.long
        if switch:
            crossing = ~s.long & (jnp.max(pos) + 1 > orig)
            logits, cache = jax.lax.cond(crossing, recompute_logits, step_logits, s, pos)
            long = s.long | crossing
        else:
            logits, cache = step_logits(s, pos)
        nxt, tokens, lengths, done, rng = emit_token(
            logits, s.rng, sp, top_k, s.step, s.done, s.tokens, s.lengths, stop_ids, pad_id
        )
        return s.replace(step=s.step + 1, tok=nxt, cache=cache, pos=pos, done=done, tokens=tokens,
                         lengths=lengths, rng=rng, long=long)

    if not config.scan_layers:
        # one buffer per layer inside the loop: each step writes and reads every layer's K/V
        # in place, without slicing (copying) them out of the stacked arrays
        state = state.replace(cache=state.cache.split_layers())
    s = jax.lax.while_loop(cond_fn, body_fn, state)
    return GenerateOutput(tokens=s.tokens, lengths=s.lengths, steps=s.step - 1)


prefill = jax.jit(prefill_state, static_argnames=("config", "max_new_tokens", "top_k", "pad_id", "cache_dtype"))
prefill.__doc__ = """Prefill left-padded prompts (B, T) into a KV cache of T + max_new_tokens slots and
sample the first new token; returns the DecodeState that `decode` continues from."""

decode = jax.jit(decode_loop, static_argnames=("config", "max_new_tokens", "top_k", "pad_id"))
decode.__doc__ = """Run the decode while_loop from a DecodeState; returns the GenerateOutput."""


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
    the while_loop decodes one token per row at that row's own position. For longrope
    (Phi-3) the step that first crosses original_max_position_embeddings re-encodes the
    whole sequence with the long factors, as transformers does.
    """
    state = prefill_state(params, input_ids, attention_mask, rng, sp, stop_ids, config=config,
                     max_new_tokens=max_new_tokens, top_k=top_k, pad_id=pad_id, cache_dtype=cache_dtype)
    return decode_loop(params, state, sp, stop_ids, config=config, max_new_tokens=max_new_tokens, top_k=top_k,
                   pad_id=pad_id)


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
    toks, lens = to_host((out.tokens, out.lengths))  # gathered when sharded across processes
    return [toks[i, : lens[i]].tolist() for i in range(toks.shape[0])]
