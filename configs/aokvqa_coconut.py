"""MultiCoCo phase 2: InternVL3-1B Coconut curriculum on A-OKVQA (c_thought 1, 5 epochs per
stage, max_latent_stage 6, 50 epochs); set model.path to the CoT run's final_model.

    python -m latent_jax.main --config=configs/aokvqa_coconut.py:smoke --workdir /tmp/akc
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.mm_common import mm_base, smoke  # noqa: E402


def get_config(arg: str | None = None):
    c = mm_base("internvl", "aokvqa")
    c.coconut_mode = "coconut"
    c.num_epochs = 50
    c.batch_size = 16
    c.optim.learning_rate = 1e-5
    c.coconut.update(dict(c_thought=1, epochs_per_stage=5, max_latent_stage=6))
    c.eval.update(dict(max_new_tokens=256, temperature=0.8, top_p=0.9))
    if arg == "smoke":
        smoke(c)
    elif arg:
        raise ValueError(f"unknown preset {arg!r}; use smoke")
    return c
