"""Phi-4-multimodal + Coconut on CinePile (video QA), the library's namesake workflow.

    python -m latent_jax.main --config=configs/cinepile_coconut.py --workdir runs/cinepile \
        --config.model.path=/models/Phi-4-multimodal-instruct --config.data.path=/data/cinepile
    python -m latent_jax.main --config=configs/cinepile_coconut.py:smoke --workdir /tmp/cp_smoke

The seed's options are config fields: data.num_frames, data.max_videos, batch_size,
optim.learning_rate, num_epochs (num_train_epochs), data.use_hard_split,
data.visual_reliance, data.use_hico. Clips: python -m latent_jax.data.cinepile prepare.
CinePile has no reasoning steps, so the continuous thoughts are padded to
coconut.max_latent_stage (pad_latent_to_max) and grow one stage per epochs_per_stage.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.mm_common import mm_base, smoke  # noqa: E402


def get_config(arg: str | None = None):
    c = mm_base("phi4mm", "cinepile")
    c.data.num_frames = 16
    c.data.max_videos = 100
    c.batch_size = 4
    c.optim.learning_rate = 5e-5
    c.num_epochs = 3
    c.data.use_hico = True
    c.coconut.epochs_per_stage = 1
    c.coconut.max_latent_stage = 3
    c.eval.max_new_tokens = 16
    if arg == "smoke":
        smoke(c)
    elif arg:
        raise ValueError(f"unknown preset {arg!r}; use smoke")
    return c
