"""Optimizers from `config.optim`: AdamW (or Muon + AdamW) with a warmup + decay schedule,
gradient clipping, gradient accumulation (optax.MultiSteps) and optional low-precision
moments.

    tx = make_optimizer(params, config.optim, total_steps)
    opt_state = tx.init(params)

config.optim fields (all but learning_rate optional):
    name            adamw | muon
    learning_rate   peak learning rate
    schedule        constant | cosine | linear (decay after warmup to end_lr_ratio * peak)
    warmup_steps    linear warmup from 0
    end_lr_ratio    final lr / peak lr for cosine / linear (default 0)
    weight_decay    decoupled weight decay (AdamW)
    b1, b2, eps     Adam moments
    grad_clip       global-norm clip (0 = off)
    grad_accum      micro-batches per update (optax.MultiSteps; 1 = off)
    mu_dtype        dtype of the first moment ("" = param dtype; "bfloat16" halves it)
Steps count optimizer updates (with grad_accum > 1, one update per grad_accum calls).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from latent_jax.train.muon import muon_adamw

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("constant", "cosine", "linear")


def _get(c: Any, key: str, default: Any) -> Any:
    if hasattr(c, "get"):
        return c.get(key, default)
    return getattr(c, key, default)


def make_schedule(optim_config: Any, total_steps: int) -> optax.Schedule:
    """Learning rate per optimizer update: linear warmup, then constant / cosine / linear decay."""
    lr = float(_get(optim_config, "learning_rate", 1e-4))
    if lr <= 0:
        raise ValueError(f"optim.learning_rate={lr} must be > 0")
    kind = str(_get(optim_config, "schedule", "constant"))
    if kind not in SCHEDULES:
        raise ValueError(f"optim.schedule={kind!r}; use one of {', '.join(SCHEDULES)}")
    warm = max(0, int(_get(optim_config, "warmup_steps", 0)))
    end = lr * float(_get(optim_config, "end_lr_ratio", 0.0))
    decay_steps = max(1, int(total_steps) - warm)
    if kind == "constant":
        body = optax.constant_schedule(lr)
    elif kind == "cosine":
        body = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr)
    else:
        body = optax.linear_schedule(lr, end, decay_steps)
    if warm == 0:
        return body
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), body], [warm])


def param_path(path) -> str:
    """A parameter's tree path as 'a/b/c' (the names frozen masks match)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def make_optimizer(params: Any, optim_config: Any, total_steps: int,
                   frozen: Callable[[str], bool] | None = None) -> optax.GradientTransformation:
    """The optax transformation described by `optim_config` (see the module docstring);
    params whose '/'-joined path satisfies `frozen` get no updates."""
    name = str(_get(optim_config, "name", "adamw"))
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name={name!r}; use one of {', '.join(OPTIMIZERS)}")
    schedule = make_schedule(optim_config, total_steps)
    if name == "muon":
        core = muon_adamw(params, optim_config, schedule)
    else:
        mu_dtype = str(_get(optim_config, "mu_dtype", "") or "") or None
        core = optax.adamw(
            schedule,
            b1=float(_get(optim_config, "b1", 0.9)),
            b2=float(_get(optim_config, "b2", 0.999)),
            eps=float(_get(optim_config, "eps", 1e-8)),
            weight_decay=float(_get(optim_config, "weight_decay", 0.0)),
            mu_dtype=jnp.dtype(mu_dtype) if mu_dtype else None,
        )
    clip = float(_get(optim_config, "grad_clip", 0.0) or 0.0)
    tx = optax.chain(optax.clip_by_global_norm(clip), core) if clip > 0 else core
    accum = int(_get(optim_config, "grad_accum", 1) or 1)
    if accum < 1:
        raise ValueError(f"optim.grad_accum={accum}; use >= 1")
    if accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accum)
    if frozen is not None:
        labels = jax.tree_util.tree_map_with_path(lambda p, _: "frozen" if frozen(param_path(p)) else "train", params)
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx


def current_lr(optim_config: Any, total_steps: int, update_step: int) -> float:
    """The learning rate at an optimizer update (for logging)."""
    return float(make_schedule(optim_config, total_steps)(update_step))
