"""The grpo workflow on the one Trainer: a toy reward rises, and a stopped run resumes exactly."""

import json
import os
import sys

import jax
import numpy as np

from latent_jax.latent.curriculum import CurriculumConfig, LatentTokenIds, TokenizedExample
from latent_jax.testing import tiny_config
from latent_jax.models.decoder import init_params
from latent_jax.tasks.grpo import GRPOTask, GRPOTrainer, PromptSet, rl_settings
from latent_jax.data.pipeline import eval_geometry

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from configs.prosqa_grpo import get_config  # noqa: E402

TARGET = 12  # the toy task: the reward is 1 when a completion starts with a token id below this


class _Tok:
    eos_id, pad_id = 2, 0
    latent_ids = LatentTokenIds(29, 30, 31)

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(str(i) for i in ids)


class ToyTask(GRPOTask):
    def rewards(self, ro, golds, strict=None):
        acc = (ro.tokens[:, 0] < TARGET).astype(np.float64)
        return {"reward": acc, "accuracy": acc, "format": acc, "penalty": np.zeros_like(acc)}


def _task(tmp, steps, max_steps=0):
    c = get_config("smoke")
    with c.unlocked():
        c.rl.steps, c.rl.group_size, c.rl.prompts_per_step, c.rl.eval_every = steps, 8, 4, 3
        c.optim.learning_rate, c.optim.grad_clip = 3e-2, 0.0
        c.num_epochs, c.eval_every_epochs, c.log_every, c.max_steps = -(-steps // 3), 1, 1, max_steps
        c.generation.cot.max_new_tokens = 3
    s = rl_settings(c)
    mcfg = tiny_config(vocab_size=32, num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                       num_key_value_heads=1)
    cc = CurriculumConfig(mode="cot")
    rng = np.random.default_rng(0)
    ex = [TokenizedExample(tuple(int(x) for x in rng.integers(6, 28, 4)), (), (5, 2), idx=i) for i in range(16)]
    geom = eval_geometry(ex, 0, cc, _Tok.latent_ids, 4)
    # evaluation batches padded to the rollouts' 32 rows: one compiled generator
    sets = [PromptSet(ex[a:b], cc, _Tok.latent_ids, 0, n, 0, geom, 4) for a, b, n in ((0, 16, 4), (0, 8, 32), (8, 16, 32))]
    task = ToyTask(c, str(tmp), s, mcfg, _Tok(), cc, *sets, lambda path, p: None, "init", {})
    task.start_eval = {"accuracy": 0.0, "length": 0.0, "test_accuracy": 0.0, "test_length": 0.0}
    return c, task, init_params(mcfg, 0)


def _fit(tmp, steps, max_steps=0):
    c, task, params = _task(tmp, steps, max_steps)
    trainer = GRPOTrainer(c, task, str(tmp))
    return trainer.fit(trainer.init_state(params, steps)), trainer


def _last_state(d):
    from latent_jax.train.checkpoint import TrainCheckpointer

    with TrainCheckpointer(str(d / "checkpoints")) as ck:
        return ck.restore(ck.latest_step())[0]


def test_toy_reward_rises_and_a_stopped_run_resumes_exactly(tmp_path):
    from latent_jax.train.metrics import read_metrics

    res, _ = _fit(tmp_path / "full", 9)
    rows = [r for r in read_metrics(str(tmp_path / "full" / "metrics.jsonl")) if "train/reward" in r]
    rewards = [r["train/reward"] for r in rows]
    assert len(rewards) == 9 and res["steps"] == 9
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.2, rewards
    for k in ("train/kl", "train/clip_fraction", "train/length", "train/zero_std_groups", "train/rollout_s"):
        assert k in rows[-1]
    assert os.path.exists(res["plot"])
    # stopped after 4 updates (mid-epoch), restarted: the same params as the uninterrupted run
    stopped, _ = _fit(tmp_path / "resumed", 9, max_steps=4)
    assert stopped["stopped"]
    _fit(tmp_path / "resumed", 9)
    a, b = _last_state(tmp_path / "full"), _last_state(tmp_path / "resumed")
    assert int(a["step"]) == int(b["step"]) == 9
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def test_coconut_preset_runs_at_smoke_size(tmp_path):
    """configs/prosqa_grpo.py:coconut at smoke size through the workflow: a supervised Coconut
    start (its final layout, thoughts from the first update), then GRPO on prompts that hold the
    thoughts, evaluated and exported."""
    from latent_jax.tasks.grpo import run
    from latent_jax.train.metrics import read_metrics

    c = get_config("coconut,smoke")
    assert c.coconut_mode == "coconut" and c.rl.sft.num_epochs == 1
    res = run(c, str(tmp_path))
    assert res["steps"] == 4 and res["coconut_mode"] == "coconut"
    assert res["num_thoughts"] == c.coconut.max_latent_stage * c.coconut.c_thought == 1
    sft = json.load(open(tmp_path / "sft" / "test" / "results.json"))
    assert sft["stage"] == c.coconut.max_latent_stage + 1  # the start was scored at its final stage (thoughts only)
    rows = [r for r in read_metrics(str(tmp_path / "metrics.jsonl")) if "train/reward" in r]
    assert len(rows) == 4 and all(np.isfinite(r["train/loss"]) for r in rows)
    assert [e["step"] for e in res["evals"]] == [0, 2, 4]
    for d in ("best_model", "final_model"):
        assert (tmp_path / d / "model_config.json").exists()
