"""Coconut on ProntoQA with the published GPT-2-scale settings (facebookresearch/coconut
args/prontoqa_coconut.yaml): c_thought 1, epochs_per_stage 5, max_latent_stage 6,
pad_latent_to_max, 50 epochs, batch 32 per GPU (4 GPUs), lr 1e-4, weight decay 0.01,
reset_optimizer, no CoT pre-stage (load_model_path None in the original).

    python -m latent_jax.main --config=configs/prontoqa_coconut.py --workdir runs/prontoqa \\
        --config.model.path=/models/your-hf-checkpoint \\
        --config.data.train_path=data/prontoqa_train.json --config.data.val_path=data/prontoqa_valid.json \\
        --config.data.test_path=data/prontoqa_test.json

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
        c.num_epochs = 2
        return c
    if arg:
        raise ValueError(f"unknown preset {arg!r} for prontoqa_coconut.py; use smoke")
    c = _prosqa("")
    c.chain = ""
    c.coconut_mode = "coconut"
    c.model.path = ""  # fill in: local HF checkpoint directory (GPT-2 scale)
    c.data.generate = ""
    c.data.train_path, c.data.val_path, c.data.test_path = (
        "data/prontoqa_train.json", "data/prontoqa_valid.json", "data/prontoqa_test.json")
    c.coconut.c_thought, c.coconut.epochs_per_stage, c.coconut.max_latent_stage, c.coconut.pad_latent_to_max = 1, 5, 6, True
    c.num_epochs, c.batch_size = 50, 32
    c.optim.learning_rate, c.optim.weight_decay = 1e-4, 0.01
    c.optim.warmup_steps, c.optim.grad_clip = 0, 0.0
    c.optim.reset_on_stage_change = True
    c.generation.coconut.max_new_tokens = 128
    return c
