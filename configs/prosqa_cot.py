"""CoT training on ProsQA (the first phase of the paper's recipe), GPT-2-scale settings of
facebookresearch/coconut args: 50 epochs, batch 32 per GPU, lr 1e-4, weight decay 0.01.

    python -m latent_jax.main --config=configs/prosqa_cot.py --workdir runs/prosqa_cot \\
        --config.model.path=/models/gpt2-like-hf-dir --config.data.train_path=data/prosqa_train.json \\
        --config.data.val_path=data/prosqa_valid.json --config.data.test_path=data/prosqa_test.json

Then start Coconut from runs/prosqa_cot/best_model (configs/prosqa_coconut.py:paper with
--config.load_model_path=runs/prosqa_cot/best_model). model.path: a local HF directory of a
supported family (llama, mistral, qwen2, phi3) or a latent_jax checkpoint; GPT-2 itself is not
a supported family, so use a small Llama/Qwen2 checkpoint of similar size.
Preset ":smoke": generated data and a tiny from-scratch model, under a minute on CPU.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from any directory

from configs.prosqa_coconut import get_config as _prosqa  # noqa: E402


def get_config(arg: str = ""):
    c = _prosqa("smoke" if arg == "smoke" else "")
    c.chain = ""
    c.coconut_mode = "cot"
    c.optim.reset_on_stage_change = False
    if arg == "smoke":
        c.num_epochs = 2
        return c
    if arg:
        raise ValueError(f"unknown preset {arg!r} for prosqa_cot.py; use smoke")
    c.model.path = ""  # fill in: local HF checkpoint directory
    c.data.generate = ""
    c.data.train_path, c.data.val_path, c.data.test_path = (
        "data/prosqa_train.json", "data/prosqa_valid.json", "data/prosqa_test.json")
    c.num_epochs, c.batch_size = 50, 32
    c.optim.learning_rate, c.optim.weight_decay = 1e-4, 0.01
    c.optim.warmup_steps, c.optim.grad_clip = 0, 0.0
    c.coconut.c_thought, c.coconut.epochs_per_stage, c.coconut.max_latent_stage = 1, 5, 6
    c.generation.cot.max_new_tokens = 128  # the original: 128 for ProsQA / ProntoQA, 64 for GSM8k
    return c
