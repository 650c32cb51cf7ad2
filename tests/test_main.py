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
    check_override_keys(["main", "--config=configs/prosqa_coconut.py:smoke", "--config.coconut.c_thought=2"])  # valid: no exit


def _main(args, cwd, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "latent_jax.main", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_relative_workdir_from_another_directory(tmp_path):
    """The README's first command in its smoke form, from a directory that is not the
    checkout, with a relative --workdir (Orbax refuses relative paths unless resolved).
    The chain is cut to its no-CoT run to keep the suite fast: it trains, saves best_model,
    reloads it and writes results.json, which is the path that failed."""
    out = _main([f"--config={ROOT}/configs/prosqa_coconut.py:smoke", "--workdir", "runs/smoke",
                 "--config.chain=no_cot"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.load(open(tmp_path / "runs" / "smoke" / "results.json"))
    assert "no_cot" in json.dumps(res)
    assert (tmp_path / "runs" / "smoke" / "no_cot" / "best_model" / "model_config.json").exists()
    # nothing a user cannot act on: no transformers PyTorch notice, no Orbax chatter
    import re

    noise = [l for l in out.stderr.splitlines() if re.match(r"[IWEF]\d{4} |WARNING:|\[transformers\]", l)]
    assert not noise and "PyTorch was not found" not in out.stderr, noise


def test_bad_config_arguments_are_one_line_and_write_nothing(tmp_path):
    cases = [
        (["--config=configs/nope.py"], "--config file configs/nope.py does not exist"),
        ([f"--config={ROOT}/configs/mnist_act.py:bogus"], "unknown preset 'bogus'"),
        ([f"--config={ROOT}/configs/prosqa_coconut.py:smoke", "--config.c_thougth=2"], "unknown config key 'c_thougth'"),
        # a value of the wrong type: the key and its type (config_flags' own error is two lines, exit 1)
        ([f"--config={ROOT}/configs/prosqa_coconut.py:smoke", "--config.batch_size=abc"],
         "--config.batch_size=abc: batch_size takes an int, not 'abc'"),
        ([f"--config={ROOT}/configs/prosqa_coconut.py:smoke", "--config.optim.learning_rate=fast"],
         "optim.learning_rate takes a float"),
        ([f"--config={ROOT}/configs/prosqa_coconut.py:smoke", "--no_such_flag"], "Unknown command line flag"),
    ]
    for args, want in cases:
        out = _main([*args, "--workdir", "w"], cwd=tmp_path, timeout=120)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and want in lines[0], (
            args, out.stderr[-2000:])
    assert not (tmp_path / "w").exists()


def test_paths_in_the_config_are_resolved_and_uris_kept(tmp_path, monkeypatch):
    from ml_collections import ConfigDict

    from latent_jax.paths import resolve_config_paths, resolve_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "local").mkdir()
    c = ConfigDict(dict(workdir="runs/x", model=dict(path="local", hidden_size=8), data=dict(
        path="owner/dataset", train_path="d/train.json", clips_dir="gs://bucket/clips", generate="prosqa"),
        load_model_path="", chain_overrides=dict(coconut=dict(load_model_path="cot/best_model"))))
    changed = resolve_config_paths(c)
    assert c.workdir == str(tmp_path / "runs" / "x") and c.model.path == str(tmp_path / "local")
    assert c.data.train_path == str(tmp_path / "d" / "train.json")
    assert c.chain_overrides.coconut.load_model_path == str(tmp_path / "cot" / "best_model")
    assert c.data.path == "owner/dataset"  # a Hub name, not a local path
    assert c.data.clips_dir == "gs://bucket/clips" and c.data.generate == "prosqa" and c.load_model_path == ""
    assert "data.path" not in changed and "model.path" in changed
    assert resolve_path("file:///tmp/x") == "file:///tmp/x" and resolve_path("gs://b/c") == "gs://b/c"


def test_on_bad_row_is_reachable_from_the_config(tmp_path):
    """A corrupt Coconut row stops the run naming file, row and the config key; with
    --config.on_bad_row=skip the run goes on."""
    rows = [{"question": f"q{i}?", "steps": ["s"], "answer": "a"} for i in range(8)]
    rows[3] = {"question": "broken", "answer": "a"}
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.json").write_text(json.dumps(rows))
    common = [f"--config={ROOT}/configs/prosqa_coconut.py:smoke", "--config.chain=", "--config.coconut_mode=no_cot",
              "--config.data.generate=", f"--config.data.train_path={tmp_path}/train.json",
              f"--config.data.val_path={tmp_path}/valid.json", f"--config.data.test_path={tmp_path}/test.json",
              "--config.batch_size=4", "--config.num_epochs=1", "--config.max_steps=1"]
    out = _main([*common, "--workdir", "a"], cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert "train.json: row 3" in lines[0] and "--config.on_bad_row=skip" in lines[0]
    out = _main([*common, "--workdir", "b", "--config.on_bad_row=skip"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "skipped 1 of 8 rows" in out.stderr


def test_missing_model_hint_names_the_configs_model(tmp_path):
    sys.path.insert(0, ROOT)
    from configs.aokvqa_cot import get_config as aokvqa
    from configs.cinepile_coconut import get_config as cinepile
    from latent_jax.tasks.coconut_mm import run

    for get, want, other in ((cinepile, "microsoft/Phi-4-multimodal-instruct", "InternVL3"),
                             (aokvqa, "OpenGVLab/InternVL3-1B-hf", "Phi-4")):
        with pytest.raises(FileNotFoundError) as e:
            run(get(), str(tmp_path))
        assert "config.model.path=''" in str(e.value) and want in str(e.value) and other not in str(e.value)


_HIDE_TORCH = '''
import importlib.util, sys
_find = importlib.util.find_spec
def _find_spec(name, package=None):
    return None if name == "torch" or name.startswith("torch.") else _find(name, package)
importlib.util.find_spec = _find_spec
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _NoTorch())
'''


def test_no_pytorch_notice_without_torch(tmp_path):
    """requirements.txt has no torch: transformers then announces 'PyTorch was not found' at
    import, which latent_jax (tokenizers and configs only) keeps quiet. torch is hidden here
    with a sitecustomize; the first run shows the notice does appear without latent_jax."""
    (tmp_path / "sitecustomize.py").write_text(_HIDE_TORCH)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}", JAX_PLATFORMS="cpu")

    def stderr(code):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stderr

    assert "PyTorch was not found" in stderr("import transformers")
    err = stderr("import latent_jax.generate, transformers\n"
                 "from transformers.utils import is_torch_available\n"
                 "assert not is_torch_available()\n"
                 "transformers.utils.logging.get_logger('transformers').warning('a real warning')")
    assert "PyTorch was not found" not in err and "a real warning" in err


def test_help_exits_0_with_the_configs_presets_fields_and_workdir_default(tmp_path):
    """--help: exit 0; without --config the usage and the config files (not base.py /
    mm_common.py); with --config the file's presets and every field with its default, and the
    workdir actually used when --workdir is not given."""
    out = _main(["--help"], cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage: python -m latent_jax.main" in out.stdout and "runs/default" in out.stdout
    assert "configs/prosqa_coconut.py" in out.stdout and "configs/medusa_heads.py" in out.stdout
    assert "base.py" not in out.stdout and "mm_common.py" not in out.stdout
    assert "Default: config.workdir" not in out.stdout
    out = _main(["--config=configs/prosqa_coconut.py:smoke", "--help"], cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "presets (--config=configs/prosqa_coconut.py:PRESET): smoke, coconut_only, paper, text or paper_text" in text
    assert "workdir when --workdir is not given: runs/default" in text
    assert "\n  batch_size = 16\n" in text and "\n  data.gen.max_hops = 2\n" in text  # the smoke preset's values
    assert "\n  optim.learning_rate = " in text and "\n  workflow = 'coconut'\n" in text
    out = _main(["--config=configs/nope.py", "--help"], cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_a_smoke_run_prints_only_the_librarys_lines_and_says_it_stopped(tmp_path):
    """verbose=False (the default): no absl INFO lines (jax's backend probing, Orbax internals),
    no "JAX version ... available" from datasets' import, no XLA C++ log lines (turned on here
    with TF_CPP_MIN_LOG_LEVEL=0, as a slow compile's banner would be). The run is cut by
    config.max_steps, which the entry point reports with the step of the total and how to resume."""
    import re

    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="0")
    out = subprocess.run([sys.executable, "-m", "latent_jax.main", "--config=configs/medusa_heads.py:smoke",
                          "--config.max_steps=1", f"--workdir={tmp_path}"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = (out.stdout + out.stderr).splitlines()
    noise = [l for l in lines if re.match(r"[IWEF]\d{4} |WARNING:|INFO:", l) or "JAX version" in l]
    assert not noise, noise[:5]
    assert f"training stopped early at step 1 of 20 (config.max_steps=1). To resume, run the same command with " \
           f"--workdir {tmp_path} and a larger --config.max_steps" in out.stdout, out.stdout[-2000:]
