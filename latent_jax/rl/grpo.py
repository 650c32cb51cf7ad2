"""The GRPO objective (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300) as pure functions.

For each prompt, G completions are sampled (a group); completion i gets reward r_i and the
group-relative advantage

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)        scale="group" (the paper, TRL's default)
    A_i = (r_i - mean(r_group)) / (std(r_batch) + eps)        scale="batch"
    A_i =  r_i - mean(r_group)                                 scale="none"  (Dr. GRPO)

std with Bessel's correction and eps = 1e-4, as TRL's GRPOTrainer. A group whose rewards
are all equal (every answer right, or every answer wrong), and any group of G = 1, has
A = 0 exactly: it contributes no policy gradient (only the KL term, when on).

Every completion token t of completion i then carries the clipped surrogate (PPO)

    rho = exp(logp - logp_old)
    L_it = -min(rho * A_i, clip(rho, 1 - eps_low, 1 + eps_high) * A_i) + beta * KL_it
    KL_it = exp(logp_ref - logp) - (logp_ref - logp) - 1      (the k3 estimator, >= 0)

and the per-token terms are aggregated (`AGGREGATIONS`):

    "sequence"  mean over each completion's tokens, then over completions (the paper; TRL
                loss_type="grpo"). Every completion weighs the same, so a token of a long
                completion weighs less: long wrong answers are penalised less per token and
                long right answers rewarded less (the length bias Dr. GRPO points out).
    "token"     sum over all completion tokens / their number (TRL "bnpo"; "dapo" on one
                process): every token weighs the same.
    "fixed"     sum over all completion tokens / (completions x max_new_tokens) (TRL
                "dr_grpo"): a constant normaliser, no length bias.

With one update per rollout (num_iterations = 1) logp_old is logp without gradient, so
rho = 1 in value and the gradient is the plain policy gradient A * grad logp.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

SCALES = ("group", "batch", "none")
AGGREGATIONS = ("sequence", "token", "fixed")
# TRL's loss_type names for the same aggregations
AGGREGATION_ALIASES = {"grpo": "sequence", "bnpo": "token", "dapo": "token", "dr_grpo": "fixed"}


def check_aggregation(name: str, key: str = "rl.aggregation") -> str:
    """The canonical aggregation name for `name` (TRL's loss_type names accepted)."""
    name = AGGREGATION_ALIASES.get(name, name)
    if name not in AGGREGATIONS:
        raise ValueError(f"config.{key}={name!r}; use one of {', '.join(AGGREGATIONS)} "
                         f"(or TRL's {', '.join(AGGREGATION_ALIASES)})")
    return name


def check_scale(scale: str, key: str = "rl.scale_rewards") -> str:
    if scale not in SCALES:
        raise ValueError(f"config.{key}={scale!r}; use one of {', '.join(SCALES)}")
    return scale


def group_advantages(rewards: Array, group_size: int, scale: str = "group", eps: float = 1e-4) -> Array:
    """Advantages (N,) of rewards (N,) laid out as N / group_size consecutive groups."""
    check_scale(scale)
    r = jnp.asarray(rewards, jnp.float32)
    G = int(group_size)
    if G < 1 or r.shape[0] % G:
        raise ValueError(f"{r.shape[0]} rewards do not split into groups of {G}; use a group size that divides them")
    if G == 1:  # a lone completion has nothing to be compared with
        return jnp.zeros_like(r)
    g = r.reshape(-1, G)
    adv = g - jnp.mean(g, axis=1, keepdims=True)
    if scale == "group":
        adv = adv / (jnp.std(g, axis=1, ddof=1, keepdims=True) + eps)
    elif scale == "batch":
        adv = adv / (jnp.std(r, ddof=1) + eps)
    return adv.reshape(-1)


def token_logprobs(logits: Array, tokens: Array, temperature: float | Array = 1.0) -> Array:
    """log p(tokens) (B, T) under logits (B, T, V) / temperature (the sampling distribution)."""
    lg = logits.astype(jnp.float32) / jnp.maximum(jnp.asarray(temperature, jnp.float32), 1e-6)
    logp = jax.nn.log_softmax(lg, axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def k3_kl(logp: Array, ref_logp: Array) -> Array:
    """The k3 estimator of KL(pi || pi_ref) per token: exp(d) - d - 1 with d = ref_logp - logp."""
    d = ref_logp - logp
    return jnp.exp(d) - d - 1.0


def aggregate(per_token: Array, mask: Array, aggregation: str = "sequence", max_len: int | None = None) -> Array:
    """Reduce per-token terms (B, T) over the completion tokens (mask (B, T)) to a scalar."""
    agg = check_aggregation(aggregation)
    m = mask.astype(jnp.float32)
    x = per_token * m
    if agg == "sequence":
        return jnp.mean(jnp.sum(x, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0))
    if agg == "token":
        return jnp.sum(x) / jnp.maximum(jnp.sum(m), 1.0)
    T = per_token.shape[1] if max_len is None else int(max_len)
    return jnp.sum(x) / (per_token.shape[0] * T)


def grpo_objective(
    logp: Array,
    old_logp: Array,
    advantages: Array,
    mask: Array,
    ref_logp: Array | None = None,
    *,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    beta: float = 0.0,
    aggregation: str = "sequence",
    max_len: int | None = None,
) -> tuple[Array, dict]:
    """(loss, metrics) of the clipped GRPO surrogate (module docstring).

    logp, old_logp, ref_logp, mask: (B, T) over completion tokens; advantages (B,).
    eps_high defaults to eps_low (DAPO's clip-higher sets it larger, e.g. 0.28). metrics:
    kl (token mean of k3, 0 without a reference), clip_fraction (share of completion tokens
    whose ratio is clipped in the direction of the advantage), ratio (token mean)."""
    eh = eps_low if eps_high is None else eps_high
    m = mask.astype(jnp.float32)
    A = advantages.astype(jnp.float32)[:, None]
    ratio = jnp.exp(logp - old_logp)
    unclipped = ratio * A
    clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eh) * A
    per_token = -jnp.minimum(unclipped, clipped)
    n = jnp.maximum(jnp.sum(m), 1.0)
    kl = jnp.zeros((), jnp.float32)
    if ref_logp is not None:
        kl_t = k3_kl(logp, ref_logp)
        kl = jnp.sum(kl_t * m) / n
        if beta:
            per_token = per_token + beta * kl_t
    loss = aggregate(per_token, mask, aggregation, max_len)
    is_clipped = ((ratio < 1.0 - eps_low) & (A < 0)) | ((ratio > 1.0 + eh) & (A > 0))
    metrics = {
        "kl": kl,
        "clip_fraction": jnp.sum(is_clipped * m) / n,
        "ratio": jnp.sum(ratio * m) / n,
    }
    return loss, metrics
