"""MultiCoCo phase 1: InternVL3-1B chain-of-thought training on A-OKVQA (rationales as steps).

    python -m latent_jax.main --config=configs/aokvqa_cot.py --workdir runs/aokvqa_cot \
        --config.model.path=/models/InternVL3-1B-hf --config.data.path=/data/aokvqa \
        --config.data.coco_dir=/data/coco
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.mm_common import mm_base, smoke  # noqa: E402


def get_config(arg: str | None = None):
    c = mm_base("internvl", "aokvqa")
    c.coconut_mode = "cot"
    c.num_epochs = 10
    c.batch_size = 16
    c.optim.learning_rate = 1e-5
    c.eval.update(dict(max_new_tokens=256, temperature=1.0, top_p=0.9))
    if arg == "smoke":
        smoke(c)
    elif arg:
        raise ValueError(f"unknown preset {arg!r}; use smoke")
    return c
