"""GRPO on answers (latent_jax.rl) for the embedded default's graph-search task.

    python -m latent_jax.main --config=configs/prosqa_grpo.py --workdir runs/grpo
    python -m latent_jax.main --config=configs/prosqa_grpo.py:smoke --workdir runs/grpo_smoke

The model family, data and tokenizer of configs/prosqa_coconut.py (2-layer, 128-wide llama
trained from scratch on ProsQA-style graph tokens). The policy starts from a short CoT run
(rl.init = "sft": rl.sft overrides make it under-trained on purpose), or from a given model
(rl.init = "model", load_model_path = a coconut run's best_model; set coconut_mode = "coconut"
and the curriculum fields of that run to train a Coconut policy, whose continuous thoughts stay
deterministic while the tokens after them are sampled). Reward: 1 for the right answer (the
Coconut exact match after "[A]"), optionally minus the seed's length penalty.

Presets, comma-separated ("coconut,smoke"): "smoke" (toy sizes, seconds), "length" (the length
penalty on: 0.2 per token past 4, correct answers only), "coconut" (a Coconut policy from a short
Coconut run, both hops as thoughts from its first update as the embedded default trains it).
docs/rl.md has the measured runs, including why the penalty does not shorten answers here.
"""

import copy
import os
import sys

from ml_collections import ConfigDict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from any directory

from configs.prosqa_coconut import get_config as _prosqa  # noqa: E402


def rl_fields() -> ConfigDict:
    """Every GRPO knob (latent_jax.tasks.grpo, docs/rl.md)."""
    return ConfigDict(dict(
        task="prosqa",  # the reward's scorer: Coconut exact match after the answer delimiter
        init="sft",  # sft (a short supervised run into workdir/sft first) | model (config.load_model_path)
        sft=ConfigDict(),  # overrides for the supervised start (e.g. num_epochs, data.max_train_rows)
        group_size=8,  # G completions per prompt
        prompts_per_step=16,
        steps=200,
        temperature=1.0,
        top_p=1.0,
        beta=0.0,  # KL to the frozen start model (k3); 0 = no reference model kept
        eps_low=0.2,
        eps_high=0.2,  # DAPO's clip-higher: 0.28
        aggregation="token",  # sequence (TRL grpo) | token (bnpo / dapo) | fixed (dr_grpo)
        scale_rewards="group",  # group | batch | none (Dr. GRPO)
        num_iterations=1,  # updates per rollout (>1: ratio against the rollout policy, clipping active)
        format_weight=0.0,  # + weight * (exactly one "[A] answer")
        strict_format=True,  # no correctness reward without the answer delimiter ("###" / "[A]")
        # the seed's length penalty (rl/rewards.py, docs/rl.md); correct_only: only correct answers
        # pay, at most max_fraction (< 1) of their reward, so every correct answer outranks every
        # wrong one and a wrong answer never gains by being short (False: the seed's form, which
        # takes from every answer)
        length_penalty=ConfigDict(dict(enabled=False, threshold=1000, factor=0.001, shape="quadratic",
                                       preserve_accuracy=False, correct_only=True, max_fraction=0.5)),
        eval_every=20,  # held-out greedy accuracy every N steps (and at the end)
        checkpoint_every=0,  # extra checkpoints between evaluations
        max_eval_rows=0,  # 0 = the whole test split
    ))


PRESETS = ("smoke", "length", "coconut")


def get_config(arg: str = "") -> ConfigDict:
    presets = [p for p in (arg or "").split(",") if p]
    for p in presets:
        if p not in PRESETS:
            raise ValueError(f"unknown preset {p!r} for prosqa_grpo.py; use {', '.join(PRESETS)} (comma-separated)")
    smoke = "smoke" in presets
    c = _prosqa("smoke" if smoke else "")
    c.workflow = "grpo"
    c.chain = ""
    c.coconut_mode = "cot"
    c.decode_thoughts = 0
    c.rl = rl_fields()
    sft_optim = copy.deepcopy(c.optim)  # the supervised start trains with the embedded default's optimizer
    sft_optim.schedule = "constant"  # at a constant lr (the default's methods decay over 10 epochs)
    c.optim.learning_rate = 1e-4
    c.optim.schedule = "constant"  # GRPO: Adam at a constant 1e-4
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1.0
    # an under-trained CoT start: one epoch (150 updates; the embedded default trains CoT for 8)
    c.rl.sft = ConfigDict(dict(num_epochs=1, progress=False, optim=sft_optim))
    if "length" in presets:
        c.rl.length_penalty.enabled = True
        c.rl.length_penalty.threshold, c.rl.length_penalty.factor, c.rl.length_penalty.shape = 4, 0.2, "linear"
    if "coconut" in presets:
        c.coconut_mode = "coconut"
        # as the embedded default's Coconut run: its final layout (every hop a thought) from the
        # first update, no stage mixing
        c.coconut.ablation, c.coconut.uniform_prob = "no_curriculum", 0.0
        c.rl.sft = ConfigDict(dict(num_epochs=4, progress=False, optim=sft_optim))
        if not smoke:
            c.rl.sft.data = ConfigDict(dict(max_train_rows=1920))
        c.num_epochs = 4
    if smoke:
        c.rl.steps, c.rl.group_size, c.rl.prompts_per_step, c.rl.eval_every = 4, 4, 4, 2
        c.rl.sft.num_epochs = 1
    return c
