"""The 'act' workflow end to end through latent_jax.main (smoke presets)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _main(config: str, workdir: str, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "latent_jax.main", f"--config={config}", f"--workdir={workdir}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("config", ["configs/mnist_act.py:smoke", "configs/act_lm.py:smoke"])
def test_smoke_through_main(tmp_path, config):
    wd = str(tmp_path / "run")
    r = _main(config, wd)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.load(open(os.path.join(wd, "results.json")))
    assert res["steps"] == 6
    assert 0.0 <= res["final"]["accuracy"] <= 1.0
    assert 1.0 <= res["final"]["act_inner_steps"] <= res["act"]["k_max"]
    assert 1.0 <= res["final"]["act_expected_steps"] <= res["act"]["k_max"]
    assert os.path.getsize(os.path.join(wd, "act_training.png")) > 1000
    rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
    train = [r for r in rows if "train/act_inner_steps" in r]
    assert train and all("train/act_expected_steps" in r for r in train)
    assert any("val/act_inner_steps" in r for r in rows)
    assert os.path.isdir(os.path.join(wd, "checkpoints"))


def test_mnist_without_data_is_a_one_line_error(tmp_path):
    r = _main("configs/mnist_act.py:mnist,smoke", str(tmp_path / "m"), f"--config.data.data_dir={tmp_path}")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error:") and f"python -m latent_jax.data.mnist prepare --data_dir {tmp_path}" in err
