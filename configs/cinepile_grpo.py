"""GRPO on CinePile answers (latent_jax.rl): Phi-4-multimodal + Coconut, rewarded +1 for an
answer the official CinePile parsing scores correct and 0 otherwise (the seed's "CinePile
Dataset Reinforcement Learning"), optionally with the seed's length penalty.

    python -m latent_jax.main --config=configs/cinepile_grpo.py --workdir runs/cinepile_grpo \\
        --config.model.path=/models/Phi-4-multimodal-instruct --config.data.path=/data/cinepile \\
        --config.rl.init=model --config.load_model_path=runs/cinepile/best_model
    python -m latent_jax.main --config=configs/cinepile_grpo.py:smoke --workdir /tmp/cp_grpo_smoke

The data, model and curriculum fields of configs/cinepile_coconut.py. The policy is the
language model (the vision tower stays frozen; its features enter the prompts as
embeddings); with coconut_mode = "coconut" the continuous thoughts after the video and
question are deterministic and the answer tokens after them are sampled. rl.init = "sft"
runs a short multimodal Coconut run first (the :smoke default); "model" starts from
load_model_path (a multimodal_coconut run's best_model). The seed's length penalty:
rl.length_penalty.enabled = True (threshold 1000 tokens, factor 0.001, quadratic; correct answers
only, rl.length_penalty.correct_only = False for the seed's form that takes from every answer).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.cinepile_coconut import get_config as _cinepile  # noqa: E402
from configs.prosqa_grpo import rl_fields  # noqa: E402


def get_config(arg: str | None = None):
    c = _cinepile("smoke" if arg == "smoke" else None)
    c.workflow = "grpo"
    c.rl = rl_fields()
    c.rl.task = "cinepile"
    c.rl.init = "model"
    c.rl.group_size = 8
    c.rl.prompts_per_step = 4
    c.rl.steps = 100
    c.rl.eval_every = 20
    c.rl.temperature = 1.0
    c.rl.length_penalty.threshold, c.rl.length_penalty.factor = 1000, 0.001  # the seed's defaults
    sft_lr = c.optim.learning_rate
    c.optim.learning_rate = 1e-6  # RL updates on a pretrained VLM: far below the supervised rate
    c.optim.warmup_steps = 0
    if arg == "smoke":
        c.rl.init = "sft"
        c.rl.sft.num_epochs = 2
        c.rl.sft.optim = c.optim.copy_and_resolve_references()
        c.rl.sft.optim.learning_rate = sft_lr
        c.rl.group_size, c.rl.prompts_per_step, c.rl.steps, c.rl.eval_every = 4, 2, 4, 2
        c.optim.learning_rate = 1e-4
    elif arg:
        raise ValueError(f"unknown preset {arg!r} for cinepile_grpo.py; use smoke")
    return c
