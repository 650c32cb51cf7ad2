"""The config latent_jax.main uses when --config is omitted: the embedded ProsQA default
(configs/prosqa_coconut.py)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from any directory

from configs.prosqa_coconut import get_config  # noqa: E402,F401
