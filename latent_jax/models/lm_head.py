"""The LM head inside the loss: per-token quantities of the logits, computed over sequence chunks.

A training loss needs, per position, a few numbers of the full-vocabulary logits (the
log-probability of the target, the argmax, a set of log-probabilities) and never the logits
themselves. `map_head_chunks` applies the LM head and such a per-token function to one chunk of
`config.ce_chunk` positions at a time (a lax.scan over chunks, each rematerialised), so the
(batch, tokens, vocab) float32 logits exist for one chunk at a time, in the forward and in the
backward, instead of for the whole batch (9.25 GiB per copy for InternVL3 at 4 x 4096 tokens per
device). ce_chunk = 0 applies the head to the whole sequence at once; both give the same values
and gradients.

    per = map_head_chunks(params, cfg, hidden, lambda lg, y: target_logprobs(lg, y), labels)

Every task's loss goes through here: Coconut (text, multimodal, the diffusion answer), GRPO's
completion log-probabilities, the masked-diffusion LM, ACT and the streaming replies.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from latent_jax.models.config import ModelConfig
from latent_jax.models.decoder import Decoder

Array = jax.Array
IGNORE_INDEX = -100


def head_logits(params: dict, config: ModelConfig, hidden: Array) -> Array:
    """Float32 logits (B, T, V) of final-normed hidden states (B, T, D) (Decoder.head)."""
    model = Decoder(config)
    return model.apply({"params": params}, hidden, method=model.head)


def map_head_chunks(params: dict, config: ModelConfig, hidden: Array, fn: Callable, *xs: Array,
                    chunk: int | None = None):
    """fn(logits (B, c, V) float32, *xs_chunk) -> a pytree of per-token arrays (B, c, ...),
    evaluated over chunks of c = `chunk` positions (default config.ce_chunk; 0 = all T at once)
    and put back together as (B, T, ...). hidden: (B, T, D) final-normed states; xs: per-token
    inputs of fn (B, T, ...), e.g. the targets. A short last chunk is padded (hidden 0, xs 0)
    and its padding cut off. Differentiable in params and hidden; each chunk's logits are
    recomputed in the backward, never stored."""
    c = int(config.ce_chunk if chunk is None else chunk)
    B, T = hidden.shape[:2]
    if c <= 0 or c >= T:
        return fn(head_logits(params, config, hidden), *xs)
    n = -(-T // c)

    def split(a):  # (B, T, ...) -> (n, B, c, ...)
        a = jnp.pad(a, [(0, 0), (0, n * c - T)] + [(0, 0)] * (a.ndim - 2))
        return jnp.swapaxes(a.reshape((B, n, c) + a.shape[2:]), 0, 1)

    @jax.checkpoint
    def body(carry, chunk_in):
        h, *cx = chunk_in
        return carry, fn(head_logits(params, config, h), *cx)

    _, ys = jax.lax.scan(body, None, (split(hidden),) + tuple(split(x) for x in xs))
    return jax.tree.map(lambda y: jnp.swapaxes(y, 0, 1).reshape((B, n * c) + y.shape[3:])[:, :T], ys)


def target_logprobs(logits: Array, targets: Array) -> Array:
    """log softmax(logits) at targets (B, T) (an ignored target, -100, reads id 0)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    t = jnp.where(targets == IGNORE_INDEX, 0, targets).astype(jnp.int32)
    return jnp.take_along_axis(logp, t[..., None], axis=-1)[..., 0]


def logprob_and_argmax(logits: Array, targets: Array) -> tuple[Array, Array]:
    """(log p(target), argmax) per position: what a token cross-entropy and its accuracy read."""
    return target_logprobs(logits, targets), jnp.argmax(logits, axis=-1).astype(jnp.int32)


def next_token_stats(params: dict, config: ModelConfig, hidden: Array, labels: Array) -> tuple[Array, Array]:
    """(log p(labels[:, t + 1]) at position t, argmax at t), each (B, T - 1), through
    `map_head_chunks`: labels aligned with the inputs, as transformers' causal LM loss."""
    return map_head_chunks(params, config, hidden[:, :-1], logprob_and_argmax, labels[:, 1:])


def masked_mean_nll(logp: Array, labels: Array) -> tuple[Array, Array]:
    """(mean of -logp over labels != -100, their number)."""
    valid = labels != IGNORE_INDEX
    count = jnp.sum(valid)
    return jnp.sum(jnp.where(valid, -logp, 0.0)) / jnp.maximum(count, 1), count
