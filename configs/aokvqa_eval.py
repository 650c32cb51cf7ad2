"""A-OKVQA evaluation of InternVL3 in the three MultiCoCo modes (presets):

    vanilla  direct answer (t 0.6, p 0.8, 128 tokens)
    cot      chain of thought (t 1.0, p 0.9, 256 tokens)
    coconut  6 continuous thoughts (t 0.8, p 0.9, 256 tokens)

    python -m latent_jax.main --config=configs/aokvqa_eval.py:coconut --config.model.path=...
    python -m latent_jax.main --config=configs/aokvqa_eval.py:smoke --workdir /tmp/ake

`:smoke` (or `vanilla_smoke`, `cot_smoke`, `coconut_smoke`) trains briefly and evaluates
on fixtures; the plain presets only evaluate (mode eval).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.mm_common import mm_base, smoke  # noqa: E402

EVAL = {
    "vanilla": ("no_cot", dict(max_new_tokens=128, temperature=0.6, top_p=0.8)),
    "cot": ("cot", dict(max_new_tokens=256, temperature=1.0, top_p=0.9)),
    "coconut": ("coconut", dict(max_new_tokens=256, temperature=0.8, top_p=0.9)),
}


def get_config(arg: str | None = None):
    c = mm_base("internvl", "aokvqa")
    c.mode = "eval"
    name = (arg or "coconut").removesuffix("_smoke")
    if name == "smoke":
        name = "coconut"
    if name not in EVAL:
        raise ValueError(f"unknown preset {arg!r}; use vanilla, cot, coconut (or *_smoke, smoke)")
    c.coconut_mode, gen = EVAL[name]
    c.eval.update(gen)
    c.coconut.max_latent_stage = 6
    c.eval.stage = 6
    if arg and arg.endswith("smoke"):
        smoke(c)
        c.mode = "train"  # the random fixture model is trained briefly, then evaluated
        c.num_epochs = 1
        c.eval.stage = 1
    return c
