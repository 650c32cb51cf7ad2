"""Conversion + generation round trip: HF -> Orbax -> HF, logits checked against transformers,
greedy generation checked token for token, on tiny random models of every family (default)
or on a local HF checkpoint (--config.model.path=DIR).

    python -m latent_jax.main --config=configs/roundtrip.py --workdir runs/roundtrip
    python -m latent_jax.main --config=configs/roundtrip.py:smoke --workdir /tmp/roundtrip
    python -m latent_jax.main --config=configs/roundtrip.py --workdir runs/rt --config.model.path=/models/Qwen2.5-0.5B
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from any directory

from ml_collections import ConfigDict  # noqa: E402

from configs.base import get_base  # noqa: E402


def get_config(arg: str | None = None) -> ConfigDict:
    c = get_base()
    c.workflow = "roundtrip"
    c.mode = "eval"
    c.roundtrip = ConfigDict()
    c.roundtrip.families = "mistral,llama,qwen2,phi3"  # tiny random models built when model.path is empty
    c.roundtrip.prompts = ("Hello, world!", "The quick brown fox", "JAX")
    c.roundtrip.max_new_tokens = 16
    c.roundtrip.export_dtype = "float32"  # dtype of the re-exported safetensors
    c.roundtrip.logit_tolerance = 1e-4
    c.roundtrip.check_generation = True  # compare greedy tokens with transformers generate()
    for preset in filter(None, (arg or "").split(",")):
        if preset == "smoke":
            c.roundtrip.families = "llama,phi3"
            c.roundtrip.max_new_tokens = 6
        else:
            raise ValueError(f"unknown preset {preset!r} for configs/roundtrip.py; valid: smoke")
    return c
