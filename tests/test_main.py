"""The entry point: runs the Coconut smoke preset end to end and rejects unknown config keys."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "latent_jax.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_smoke_preset_runs_and_prints_the_table(tmp_path):
    # the smoke preset's chain cut to its CoT run to keep the suite fast
    out = _main("--config=configs/prosqa_coconut.py:smoke", f"--workdir={tmp_path}", "--config.chain=cot")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "method" in out.stdout and "CoT" in out.stdout and "%" in out.stdout
    res = json.load(open(tmp_path / "cot" / "test" / "results.json"))
    assert 0.0 <= res["accuracy"] <= 1.0 and res["num_examples"] == 8
    rows = [json.loads(l) for l in open(tmp_path / "cot" / "test" / "predictions.jsonl")]
    assert len(rows) == 8 and {"question", "generated_text", "generated_ids", "prediction", "answer", "correct"} <= set(rows[0])
    assert os.path.exists(tmp_path / "val_accuracy.png")
    assert os.path.exists(tmp_path / "cot" / "best_model" / "model_config.json")
    assert os.path.exists(tmp_path / "cot" / "metrics.jsonl")


def test_unknown_config_key_lists_valid_keys(tmp_path):
    out = _main("--config=configs/prosqa_coconut.py:smoke", f"--workdir={tmp_path}", "--config.c_thougth=2", timeout=120)
    assert out.returncode != 0
    assert "unknown config key 'c_thougth'" in out.stderr and "c_thought" in out.stderr
