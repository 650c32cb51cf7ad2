"""Plain fine-tuning of Phi-4-multimodal on CinePile (no continuous thought: the no-CoT
mode of the multimodal Coconut workflow), the seed's finetune_phi4_on_cinepile.py.

    python -m latent_jax.main --config=configs/cinepile_finetune.py:smoke --workdir /tmp/cpf
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.mm_common import mm_base, smoke  # noqa: E402


def get_config(arg: str | None = None):
    c = mm_base("phi4mm", "cinepile")
    c.coconut_mode = "no_cot"
    c.batch_size = 4
    c.optim.learning_rate = 5e-5
    c.num_epochs = 3
    c.eval.max_new_tokens = 16
    if arg == "smoke":
        smoke(c)
    elif arg:
        raise ValueError(f"unknown preset {arg!r}; use smoke")
    return c
