"""Every multimodal config's :smoke preset runs train + eval end to end on fixtures built at
run time: cinepile_coconut through `python -m latent_jax.main`, the others through the same
path (config file -> latent_jax.main.resolve_workflow -> run) in one process to save
start-up and compile time. Missing paths give a one-line error naming the config key."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OTHERS = ["cinepile_finetune.py:smoke", "aokvqa_cot.py:smoke", "aokvqa_coconut.py:smoke", "aokvqa_eval.py:smoke"]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")

RUNNER = """
import importlib.util, os, sys
from latent_jax.main import resolve_workflow
out, fx = sys.argv[1], sys.argv[2]
for spec in sys.argv[3:]:
    path, preset = spec.split(":")
    s = importlib.util.spec_from_file_location("cfg", os.path.join("configs", path))
    mod = importlib.util.module_from_spec(s); s.loader.exec_module(mod)
    config = mod.get_config(preset)
    config.fixtures_dir = fx
    wd = os.path.join(out, spec)
    os.makedirs(wd, exist_ok=True)
    resolve_workflow(config.workflow)(config, wd)
"""


def _check(wd, name):
    res = json.load(open(os.path.join(wd, "results.json")))
    assert res["n"] == 2 and 0.0 <= res["accuracy"] <= 1.0, name
    assert len(open(os.path.join(wd, "predictions.jsonl")).read().splitlines()) == 2
    assert res["history"] and all(h["loss"] > 0 for h in res["history"])
    assert os.path.exists(os.path.join(wd, "metrics.jsonl"))
    return res


def test_cinepile_coconut_smoke_through_main(tmp_path):
    wd = str(tmp_path / "run")
    r = subprocess.run([sys.executable, "-m", "latent_jax.main", "--config=configs/cinepile_coconut.py:smoke",
                        f"--workdir={wd}"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = _check(wd, "cinepile_coconut")
    assert res["video_tokens"]["compression_ratio"] == 2.0  # HiCo: 4 -> 2 tokens per frame
    assert "accuracy_by_question_category" in res and "accuracy_by_visual_reliance" in res
    assert res["mode"] == "coconut" and res["eval_stage"] == 1


def test_other_smoke_presets(tmp_path):
    out, fx = str(tmp_path / "runs"), str(tmp_path / "fx")
    r = subprocess.run([sys.executable, "-c", RUNNER, out, fx, *OTHERS], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for spec in OTHERS:
        res = _check(os.path.join(out, spec), spec)
        if spec.startswith("aokvqa"):
            assert "da_accuracy" in res and "mc_accuracy" in res
    assert json.load(open(os.path.join(out, OTHERS[0], "results.json")))["mode"] == "no_cot"


def test_missing_paths_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "latent_jax.main", "--config=configs/cinepile_coconut.py",
                        f"--workdir={tmp_path}"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: config.model.path=") and "--config.model.path" in err


@pytest.mark.parametrize("path", ["cinepile_coconut.py", "aokvqa_eval.py"])
def test_config_fields(path):
    import importlib.util

    s = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "configs", path))
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    c = mod.get_config(None)
    assert c.workflow == "multimodal_coconut"
    if path.startswith("cinepile"):
        for k in ("num_frames", "max_videos", "use_hard_split", "visual_reliance", "use_hico"):
            assert k in c.data
        assert c.model.family == "phi4mm" and c.optim.learning_rate == 5e-5
    else:
        assert c.mode == "eval" and c.coconut_mode == "coconut"
        assert mod.get_config("vanilla").coconut_mode == "no_cot" and mod.get_config("cot").eval.temperature == 1.0
