"""Group rollouts from the batched, KV-cached generators and the policy's log-probabilities
of what they sampled.

`rollout` repeats each prompt of a latent-aligned batch G times (a group: rows g*G .. g*G+G-1)
and samples completions in one call of

    decoding.sampling.generate        plain prompts (no thought slots): left-padded, prefilled
                                      once, one jitted while_loop over new tokens
    latent.coconut.coconut_generate   Coconut prompts: the question prefilled, the continuous
                                      thoughts scanned (deterministic: no sampling inside them),
                                      then the same while_loop samples the tokens after them;
                                      VLM prompts pass embeds_override (image / video features)

`completion_logprobs` scores the sampled tokens under any params with one teacher-forced
`coconut_forward` over [prompt | completion]: the same thought recurrence as training, so
under jax.grad the gradient of a completion token's log-probability flows back through every
thought into the question, as in Coconut training. Log-probabilities are of the
temperature-scaled distribution the tokens were sampled from (as TRL; top-p is not
renormalised into them).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from latent_jax.decoding.sampling import SamplingParams, generate
from latent_jax.latent.coconut import coconut_forward, coconut_generate
from latent_jax.models.config import ModelConfig
from latent_jax.models.lm_head import map_head_chunks
from latent_jax.parallel import to_host
from latent_jax.rl.grpo import token_logprobs

Array = jax.Array
PROMPT_KEYS = ("input_ids", "attention_mask", "latent_mask")


@dataclasses.dataclass
class Rollout:
    """G completions per prompt. prompt: the (N, Tp) prompt arrays actually used (rows repeated
    G times, groups consecutive); tokens (N, max_new) sampled ids (pad after a row stopped);
    lengths (N,) new tokens including the stop token; mask (N, max_new) True on them."""

    prompt: dict[str, np.ndarray]
    latent_start: int
    num_latent: int
    tokens: np.ndarray
    lengths: np.ndarray
    group_size: int
    embeds_override: np.ndarray | None = None
    embeds_override_mask: np.ndarray | None = None

    @property
    def mask(self) -> np.ndarray:
        return np.arange(self.tokens.shape[1])[None, :] < self.lengths[:, None]


def repeat_groups(x: np.ndarray | None, group_size: int) -> np.ndarray | None:
    """Each row repeated group_size times, groups consecutive (None stays None)."""
    return None if x is None else np.repeat(np.asarray(x), int(group_size), axis=0)


def left_padded(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """The prompt arrays cut after the last real column when every row then ends at the last
    column (plain left-padded prompts); None when some row is right-padded (Coconut rows with
    fewer thoughts)."""
    m = np.asarray(arrays["attention_mask"]).astype(bool)
    T = m.shape[1]
    last = T - 1 - np.argmax(m[:, ::-1], axis=1)
    end = int(last.max()) + 1
    if not np.all(last == end - 1):
        return None
    return {k: np.asarray(v)[:, :end] for k, v in arrays.items()}


def rollout(
    params: dict,
    arrays: dict[str, np.ndarray],
    latent_start: int,
    num_latent: int,
    rng: Array,
    *,
    config: ModelConfig,
    group_size: int,
    max_new_tokens: int,
    stop_ids: tuple[int, ...],
    pad_id: int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    feedback: bool = True,
    thought_norm: str = "none",
    embeds_override: np.ndarray | None = None,
    embeds_override_mask: np.ndarray | None = None,
) -> Rollout:
    """Sample `group_size` completions for every prompt row of `arrays` (input_ids,
    attention_mask, latent_mask; aligned at latent_start as the Coconut pipeline builds them)."""
    if group_size < 1:
        raise ValueError(f"config.rl.group_size={group_size}; sample at least one completion per prompt")
    G = int(group_size)
    prompt = {k: repeat_groups(arrays[k], G) for k in PROMPT_KEYS}
    eo, eom = repeat_groups(embeds_override, G), repeat_groups(embeds_override_mask, G)
    sp = SamplingParams.make(temperature, top_p)
    stop = jnp.asarray(list(stop_ids), jnp.int32)
    plain = left_padded(prompt) if (num_latent == 0 and eo is None) else None
    if plain is not None:
        prompt = plain
        out = generate(params, jnp.asarray(prompt["input_ids"]), jnp.asarray(prompt["attention_mask"]), rng, sp, stop,
                       config=config, max_new_tokens=int(max_new_tokens), top_k=int(top_k), pad_id=int(pad_id))
    else:
        out = coconut_generate(
            params, jnp.asarray(prompt["input_ids"]), jnp.asarray(prompt["attention_mask"]),
            jnp.asarray(prompt["latent_mask"]), rng, sp, stop, config=config, latent_start=int(latent_start),
            num_latent=int(num_latent), max_new_tokens=int(max_new_tokens), top_k=int(top_k), pad_id=int(pad_id),
            feedback=bool(feedback), thought_norm=thought_norm,
            embeds_override=None if eo is None else jnp.asarray(eo),
            embeds_override_mask=None if eom is None else jnp.asarray(eom),
        )
    return Rollout(prompt=prompt, latent_start=int(latent_start), num_latent=int(num_latent),
                   tokens=to_host(out.tokens), lengths=to_host(out.lengths), group_size=G,
                   embeds_override=eo, embeds_override_mask=eom)


def sequence_arrays(ro: Rollout) -> dict[str, np.ndarray]:
    """[prompt | completion] arrays for `completion_logprobs`: input_ids, attention_mask,
    latent_mask, completion_mask (N, max_new), and embeds_override(_mask) extended with zeros."""
    p = ro.prompt
    n, m = ro.tokens.shape
    mask = ro.mask
    out = {
        "input_ids": np.concatenate([p["input_ids"], ro.tokens.astype(np.int32)], axis=1),
        "attention_mask": np.concatenate([p["attention_mask"].astype(np.int32), mask.astype(np.int32)], axis=1),
        "latent_mask": np.concatenate([p["latent_mask"].astype(bool), np.zeros((n, m), bool)], axis=1),
        "completion_mask": mask,
    }
    if ro.embeds_override is not None:
        eo = ro.embeds_override
        out["embeds_override"] = np.concatenate([eo, np.zeros((n, m) + eo.shape[2:], eo.dtype)], axis=1)
        out["embeds_override_mask"] = np.concatenate([ro.embeds_override_mask.astype(bool), np.zeros((n, m), bool)], axis=1)
    return out


def completion_logprobs(
    params: dict,
    batch: dict,
    *,
    config: ModelConfig,
    latent_start: int,
    num_latent: int,
    prompt_len: int,
    temperature: float | Array = 1.0,
    feedback: bool = True,
    remat_thoughts: bool = True,
    thought_norm: str = "none",
) -> Array:
    """log p(completion token j) (N, max_new) under `params`, for `sequence_arrays` output
    (0 past each completion's end; differentiable, through the thoughts)."""
    ids, am = batch["input_ids"], batch["attention_mask"]
    out = coconut_forward(
        params, ids, am, batch["latent_mask"], config=config, latent_start=latent_start, num_latent=num_latent,
        feedback=feedback, remat_thoughts=remat_thoughts, thought_norm=thought_norm,
        embeds_override=batch.get("embeds_override"), embeds_override_mask=batch.get("embeds_override_mask"),
    )
    P = int(prompt_len)
    m = ids.shape[1] - P
    # completion token 0 is predicted at the prompt's last real column (Coconut rows may be
    # right-padded), token j > 0 at column P + j - 1
    pm = am[:, :P].astype(jnp.int32)
    last = (P - 1 - jnp.argmax(pm[:, ::-1], axis=1)).astype(jnp.int32)
    cols = jnp.concatenate([last[:, None], jnp.broadcast_to(P + jnp.arange(m - 1, dtype=jnp.int32), (ids.shape[0], m - 1))],
                           axis=1)
    # the LM head only at the completion's columns, inside chunks of config.ce_chunk positions
    hidden = jnp.take_along_axis(out.hidden, cols[:, :, None], axis=1)
    lp = map_head_chunks(params, config, hidden, lambda lg, t: token_logprobs(lg, t, temperature), ids[:, P:])
    return jnp.where(batch["completion_mask"], lp, 0.0)


@functools.partial(jax.jit, static_argnames=("config", "latent_start", "num_latent", "prompt_len", "feedback",
                                             "thought_norm"))
def completion_logprobs_jit(params, batch, temperature, *, config, latent_start, num_latent, prompt_len,
                            feedback=True, thought_norm="none"):
    """`completion_logprobs` jitted, without gradients (reference / old-policy scoring)."""
    return completion_logprobs(params, batch, config=config, latent_start=latent_start, num_latent=num_latent,
                               prompt_len=prompt_len, temperature=temperature, feedback=feedback,
                               remat_thoughts=False, thought_norm=thought_norm)
