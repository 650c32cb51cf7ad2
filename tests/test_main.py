"""The entry point: runs the Coconut smoke preset end to end (one subprocess) and rejects
unknown config keys."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_smoke_preset_runs_and_prints_the_table(tmp_path):
    # the smoke preset's chain cut to its CoT run to keep the suite fast
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-m", "latent_jax.main", "--config=configs/prosqa_coconut.py:smoke", f"--workdir={tmp_path}",
         "--config.chain=cot"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "method" in out.stdout and "CoT" in out.stdout and "%" in out.stdout
    res = json.load(open(tmp_path / "cot" / "test" / "results.json"))
    assert 0.0 <= res["accuracy"] <= 1.0 and res["num_examples"] == 8
    rows = [json.loads(l) for l in open(tmp_path / "cot" / "test" / "predictions.jsonl")]
    assert len(rows) == 8 and {"question", "generated_text", "generated_ids", "prediction", "answer", "correct",
                               "truncated"} <= set(rows[0])
    # a generation cut by max_new_tokens (not by EOS) is flagged and counted
    assert res["truncated"] == sum(r["truncated"] for r in rows)
    for r in rows:
        if r["truncated"]:  # ran to the limit without EOS
            assert r["num_tokens"] == res["generation_max_new_tokens"]
        if r["num_tokens"] < res["generation_max_new_tokens"]:  # stopped early: by EOS
            assert not r["truncated"]
    assert os.path.exists(tmp_path / "val_accuracy.png")
    assert os.path.exists(tmp_path / "cot" / "best_model" / "model_config.json")
    assert os.path.exists(tmp_path / "cot" / "metrics.jsonl")


def test_unknown_config_key_lists_valid_keys(monkeypatch):
    # what `python -m latent_jax.main` runs before absl parses the flags
    from latent_jax.main import check_override_keys

    monkeypatch.chdir(ROOT)
    argv = ["main", "--config=configs/prosqa_coconut.py:smoke", "--config.c_thougth=2"]
    with pytest.raises(SystemExit) as e:
        check_override_keys(argv)
    msg = str(e.value.code)
    assert "unknown config key 'c_thougth'" in msg and "c_thought" in msg
    check_override_keys(["main", "--config=configs/prosqa_coconut.py:smoke", "--config.c_thought=2"])  # valid: no exit
