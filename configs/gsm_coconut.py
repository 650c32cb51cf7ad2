"""Coconut on GSM8k (augmented, Deng et al. 2023 format) with the published GPT-2-scale
settings (facebookresearch/coconut args/gsm_coconut.yaml): c_thought 2, epochs_per_stage 3,
max_latent_stage 3, pad_latent_to_max, 25 epochs, batch 32 per GPU (4 GPUs), lr 1e-4,
weight decay 0.01, reset_optimizer, started from the CoT model and skipping stage 0
(the original's `resume: 3`). Generation: 64 new tokens, greedy.

    python -m latent_jax.main --config=configs/gsm_coconut.py --workdir runs/gsm \\
        --config.model.path=/models/your-hf-checkpoint \\
        --config.load_model_path=runs/gsm_cot/best_model \\
        --config.data.train_path=data/gsm_train.json --config.data.val_path=data/gsm_valid.json \\
        --config.data.test_path=data/gsm_test.json

Preset ":smoke": generated ProsQA-style data and a tiny model, under a minute on CPU.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from any directory

from configs.prosqa_coconut import get_config as _prosqa  # noqa: E402


def get_config(arg: str = ""):
    if arg == "smoke":
        c = _prosqa("smoke")
        c.chain = ""
        c.coconut_mode = "coconut"
        c.coconut.c_thought = 2
        c.num_epochs = 2
        return c
    if arg:
        raise ValueError(f"unknown preset {arg!r} for gsm_coconut.py; use smoke")
    c = _prosqa("")
    c.chain = ""
    c.coconut_mode = "coconut"
    c.model.path = ""  # fill in: local HF checkpoint directory (GPT-2 scale)
    c.load_model_path = ""  # fill in: the GSM8k CoT run's best_model
    c.data.generate = ""
    c.data.train_path, c.data.val_path, c.data.test_path = (
        "data/gsm_train.json", "data/gsm_valid.json", "data/gsm_test.json")
    c.coconut.c_thought, c.coconut.epochs_per_stage, c.coconut.max_latent_stage, c.coconut.pad_latent_to_max = 2, 3, 3, True
    c.num_epochs, c.batch_size, c.start_epoch = 25, 32, 3
    c.optim.learning_rate, c.optim.weight_decay = 1e-4, 0.01
    c.optim.warmup_steps, c.optim.grad_clip = 0, 0.0
    c.optim.reset_on_stage_change = True
    c.generation.coconut.max_new_tokens = 64
    c.generation.cot.max_new_tokens = 64
    c.generation.no_cot.max_new_tokens = 64
    return c
