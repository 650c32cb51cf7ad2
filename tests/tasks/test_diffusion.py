"""Workflow "diffusion": a tiny bidirectional model trained with the masked-diffusion SFT
objective learns the toy task (reverse the digits, add one mod 10). Chance token accuracy is
1/10; after 250 steps the held-out answers decoded by diffusion must reach 30% token
accuracy, 3x chance (a 200-step run measured 50%)."""

import os

import pytest

from configs.diffusion_lm import get_config
from latent_jax.models.io import load_any
from latent_jax.tasks.diffusion import run, toy_examples


def test_toy_task_is_learned(tmp_path):
    c = get_config()
    c.train_steps = 250
    c.eval_every_steps = 0
    c.progress = False
    c.data.num_train = 2048
    c.data.num_eval = 128
    out = run(c, str(tmp_path))
    assert out["chance_token_acc"] == 0.1
    assert out["answer_token_acc"] >= 0.3, out  # held-out, decoded with diffusion_generate
    assert out["decode_forward_passes"] == 6
    assert os.path.exists(tmp_path / "metrics.jsonl") and os.path.exists(tmp_path / "loss.png")
    cfg, params = load_any(str(tmp_path / "model"))
    assert cfg.vocab_size == 14


def test_toy_examples_and_bad_config(tmp_path):
    ids, p = toy_examples(3, num_digits=4, seed=1)
    assert p == 6 and ids.shape == (3, 10)
    d = ids[:, 1:5] - 4
    assert (ids[:, 6:] - 4 == (d[:, ::-1] + 1) % 10).all()
    c = get_config("smoke")
    c.data.task = "images"
    with pytest.raises(ValueError, match="data.task"):
        run(c, str(tmp_path))
