"""Muon for the hidden 2-D weights, AdamW for everything else, as one optax transformation.

Hidden weights are the projection kernels inside the decoder's layers (q/k/v/o, gate/up/
down, fused qkv / gate_up; stacked scan layers included, their leading layer axis treated
as a batch axis). Embeddings, the LM head, norms, biases, vision encoders and the ACT /
FiLM / halting parameters go to AdamW with `optim_config.adamw_learning_rate`.

    tx = muon_adamw(params, config.optim, schedule)   # config.optim.name == "muon"
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers, muon

MUON, ADAMW = "muon", "adamw"

# '/'-joined param path of a hidden projection kernel inside a decoder layer
_HIDDEN_KERNEL = re.compile(
    r"(^|/)(layers_\d+|layers/layer)/(self_attn|mlp)/"
    r"(q_proj|k_proj|v_proj|o_proj|qkv_proj|gate_proj|up_proj|down_proj|gate_up_proj)/kernel$"
)


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def muon_labels(params: Any) -> Any:
    """Pytree of 'muon' / 'adamw' labels, one per param leaf, from the param paths."""

    def one(path, x):
        return MUON if np.ndim(x) >= 2 and _HIDDEN_KERNEL.search(_path_str(path)) else ADAMW

    return jax.tree_util.tree_map_with_path(one, params)


def _dimension_numbers(params: Any, labels: Any) -> Any:
    """Matrix axes for Muon: the last two (input, output) axes; leading axes are batch."""

    def one(x, lab):
        if lab != MUON:
            return None
        nd = np.ndim(x)
        return MuonDimensionNumbers(reduction_axis=nd - 2, output_axis=nd - 1)

    return jax.tree.map(one, params, labels)


def muon_adamw(params: Any, optim_config: Any, schedule: Callable | float | None = None) -> optax.GradientTransformation:
    """optax.multi_transform of Muon (hidden 2-D weights) and AdamW (the rest).

    optim_config fields: learning_rate (Muon), adamw_learning_rate (AdamW), weight_decay,
    b1, b2; optional muon_beta (momentum, default 0.95) and muon_ns_steps (default 5).
    `schedule`: a learning-rate schedule (step -> lr) for the Muon group, or None for the
    constant optim_config.learning_rate; the AdamW group follows the same schedule shape
    scaled to adamw_learning_rate.
    """
    lr = float(optim_config.learning_rate)
    adam_lr0 = float(optim_config.get("adamw_learning_rate", lr) if hasattr(optim_config, "get")
                     else getattr(optim_config, "adamw_learning_rate", lr))
    if lr <= 0 or adam_lr0 <= 0:
        raise ValueError(f"optim.learning_rate={lr} and optim.adamw_learning_rate={adam_lr0} must be > 0")
    get = (lambda k, d: optim_config.get(k, d)) if hasattr(optim_config, "get") else (
        lambda k, d: getattr(optim_config, k, d))
    wd = float(get("weight_decay", 0.0))
    b1, b2 = float(get("b1", 0.9)), float(get("b2", 0.999))
    if schedule is None:
        muon_lr, adam_lr = lr, adam_lr0
    elif callable(schedule):
        ratio = adam_lr0 / lr
        muon_lr, adam_lr = schedule, (lambda step: schedule(step) * ratio)
    else:
        muon_lr, adam_lr = float(schedule), float(schedule) * adam_lr0 / lr

    labels = muon_labels(params)
    if not any(lab == MUON for lab in jax.tree.leaves(labels)):
        raise ValueError(
            "optim.name='muon' found no hidden 2-D decoder weights to put on Muon; use optim.name='adamw'"
        )
    muon_tx = muon(
        learning_rate=muon_lr,
        beta=float(get("muon_beta", 0.95)),
        ns_steps=int(get("muon_ns_steps", 5)),
        weight_decay=wd,
        muon_weight_dimension_numbers=_dimension_numbers(params, labels),
    )
    adam_tx = optax.adamw(adam_lr, b1=b1, b2=b2, weight_decay=wd)
    return optax.multi_transform({MUON: muon_tx, ADAMW: adam_tx}, labels)
