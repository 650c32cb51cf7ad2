"""Coconut training loop: exact resume, and the same losses on 1 and on 8 (data=2, fsdp=2,
tensor=2) fake CPU devices.

One uninterrupted in-process run (1 device, module fixture) is the reference for both: a run
stopped mid-epoch and resumed must reproduce it, and so must the same run in one subprocess
with 8 fake devices."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from latent_jax.testing import cpu_devices_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 4  # 2 epochs x 2 steps: stage 0 (no latent), then stage 1 (one latent)


def tiny_config(max_steps: int):
    """The smoke preset cut to one Coconut run of 2 epochs (stage 0 then stage 1, 2 steps
    each) on a 1-layer model, stopped after `max_steps` without evaluation."""
    sys.path.insert(0, ROOT)
    from configs.prosqa_coconut import get_config

    c = get_config("smoke")
    c.chain = ""
    c.coconut_mode = "coconut"
    c.data.gen.train, c.data.gen.valid, c.data.gen.test = 16, 4, 4
    c.model.num_hidden_layers = 1
    c.batch_size = 8
    c.num_epochs = 2
    c.coconut.epochs_per_stage = 1
    c.coconut.max_latent_stage = 1
    c.eval_every_epochs = 100
    c.max_steps = max_steps
    c.optim.reset_on_stage_change = True
    return c


def train_losses(workdir):
    from latent_jax.train.metrics import read_metrics

    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Train losses of the reference run (1 device, no interruption)."""
    from latent_jax.tasks.coconut import run

    d = tmp_path_factory.mktemp("full")
    full = run(tiny_config(STEPS), str(d))
    assert full["stopped"] and full["step"] == STEPS
    return train_losses(d)


def test_resume_equals_uninterrupted(uninterrupted, tmp_path):
    from latent_jax.tasks.coconut import run

    part = run(tiny_config(3), str(tmp_path))  # stops mid-epoch 2, after the stage change
    assert part["step"] == 3
    rest = run(tiny_config(STEPS), str(tmp_path))  # picks up the mid-epoch checkpoint
    assert rest["step"] == STEPS
    a, b = uninterrupted, train_losses(tmp_path)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-6)
    # steps 3-4 train stage 1 (with a latent); the loss moved
    assert len(set(np.round(list(a.values()), 6))) > 1


_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    assert jax.device_count() == 8
    sys.path.insert(0, {tests!r})
    from test_coconut import tiny_config, train_losses, STEPS
    from latent_jax.tasks.coconut import run
    c = tiny_config(STEPS)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
    run(c, {workdir!r})
    print("LOSSES", json.dumps(train_losses({workdir!r})))
""")


def test_eight_fake_devices_match_one(uninterrupted, tmp_path):
    env = cpu_devices_env(8)
    code = _SCRIPT.format(root=ROOT, tests=os.path.dirname(os.path.abspath(__file__)), workdir=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("LOSSES")][-1]
    eight = {int(k): v for k, v in json.loads(line[len("LOSSES "):]).items()}
    one = uninterrupted
    assert sorted(one) == sorted(eight) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([eight[s] for s in sorted(eight)], [one[s] for s in sorted(one)], rtol=2e-4)


def test_chain_keeps_a_given_generate_dir(tmp_path):
    """A chained run shares one generated data set: workdir/data by default, or the
    data.generate_dir the user set (not silently replaced)."""
    from configs.prosqa_coconut import get_config
    from latent_jax.tasks.coconut import sub_config

    c = get_config("smoke")
    sub = sub_config(c, "cot", str(tmp_path), None)
    assert sub.data.generate_dir == os.path.join(str(tmp_path), "data")
    c.data.generate_dir = str(tmp_path / "mine")
    for mode in ("no_cot", "cot", "coconut"):
        assert sub_config(c, mode, str(tmp_path), str(tmp_path / "cot")).data.generate_dir == str(tmp_path / "mine")


def test_decode_thoughts_lists_each_thought_in_predictions(tmp_path):
    """decode_thoughts=k: every test prediction of a Coconut run carries, per continuous
    thought, its top-k tokens through the LM head with probabilities."""
    from latent_jax.tasks.coconut import run

    c = tiny_config(0)
    c.decode_thoughts = 2
    run(c, str(tmp_path))
    rows = [json.loads(l) for l in open(tmp_path / "test" / "predictions.jsonl")]
    assert len(rows) == 4
    for r in rows:
        assert len(r["thoughts"]) == 1  # stage 1: one thought
        (top,) = r["thoughts"]
        assert len(top) == 2 and all(isinstance(t, str) and 0.0 <= p <= 1.0 for t, p in top)
        assert top[0][1] >= top[1][1]


def test_checkpoint_every_step_killed_at_the_epoch_end_resumes(uninterrupted, tmp_path, monkeypatch, capsys):
    """checkpoint_every_steps=1 puts a periodic save on the epoch's last step, where the
    epoch-end save follows (and on max_steps, where the stop save follows): each step is
    stored once. A run killed while re-saving that step (old copy set aside, new one not yet
    written) resumes from it and reproduces the uninterrupted losses."""
    from latent_jax.train import checkpoint as ckmod
    from latent_jax.tasks.coconut import run

    class Killed(Exception):
        pass

    real_save, saves = ckmod.TrainCheckpointer._save, []

    def dying_save(self, step, state, m, extra):
        saves.append(int(step))
        if saves.count(2) == 2:  # the epoch-end save of step 2, after the periodic one
            raise Killed
        return real_save(self, step, state, m, extra)

    c = tiny_config(STEPS)
    c.checkpoint_every_steps = 1
    monkeypatch.setattr(ckmod.TrainCheckpointer, "_save", dying_save)
    with pytest.raises(Killed):
        run(c, str(tmp_path))
    assert saves == [1, 2, 2]
    ckdir = tmp_path / "checkpoints"
    assert (ckdir / f"2{ckmod._REPLACED_SUFFIX}").is_dir() and not (ckdir / "2").exists()  # killed mid-replace
    monkeypatch.setattr(ckmod.TrainCheckpointer, "_save", real_save)

    capsys.readouterr()
    rest = run(c, str(tmp_path))  # the set-aside step 2 is put back and the run resumes from it
    assert "resumed from step 2 (epoch 0)" in capsys.readouterr().out
    assert rest["stopped"] and rest["step"] == STEPS  # step 4: periodic save, then the stop save
    names = os.listdir(ckdir)
    assert str(STEPS) in names and not [n for n in names if n.endswith(ckmod._REPLACED_SUFFIX)]
    a, b = uninterrupted, train_losses(tmp_path)
    assert sorted(b) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-6)


def test_converted_prosqa_files_train_and_evaluate(tmp_path):
    """Real ProsQA files (here rows written by hand in their schema) converted to graph tokens
    are what training and evaluation read: no code change, only data paths."""
    from latent_jax.data.prosqa import main as prosqa_main
    from latent_jax.tasks.coconut import run

    sys.path.insert(0, os.path.join(ROOT, "tests", "data"))
    from test_prosqa_graph import PROSQA_ROWS

    src = tmp_path / "src"
    src.mkdir()
    for split in ("train", "valid", "test"):
        (src / f"prosqa_{split}.json").write_text(json.dumps(PROSQA_ROWS * (4 if split == "train" else 1)))
    files = [str(src / f"prosqa_{s}.json") for s in ("train", "valid", "test")]
    assert prosqa_main(["convert", "--in", *files, "--out", str(tmp_path / "graph"), "--node-tokens", "16"]) == 0
    c = tiny_config(0)
    c.data.generate = ""
    for k, s in (("train_path", "train"), ("val_path", "valid"), ("test_path", "test")):
        c.data[k] = str(tmp_path / "graph" / f"prosqa_{s}.json")
    c.coconut.max_latent_stage, c.num_epochs, c.eval_every_epochs = 3, 2, 1
    out = run(c, str(tmp_path / "run"))
    assert out["test"]["num_examples"] == 2 and "probe" in out["test"]
    assert out["test"]["probe"]["plot"] == str(tmp_path / "run" / "thought_probe.png")
    assert os.path.getsize(out["test"]["probe"]["plot"]) > 1000
    tok = json.load(open(tmp_path / "run" / "tokenizer" / "tokenizer.json"))["model"]["vocab"]
    assert all(str(i) in tok for i in range(16))  # the whole node vocabulary, not only the ids seen
    rows = [json.loads(x) for x in open(tmp_path / "run" / "test" / "predictions.jsonl")]
    assert [r["answer"] for r in rows] == [str(json.load(open(c.data.test_path))[i]["target"]) for i in range(2)]


def test_chain_with_walks_starts_every_method_from_the_shared_base(tmp_path):
    """chain "walks,no_cot,cot,coconut": every method's run loads workdir/walks/best_model, unless
    the user named a model; in eval mode the base is not re-scored."""
    from configs.prosqa_coconut import get_config
    from latent_jax.tasks.coconut import sub_config

    c = get_config("smoke")
    base = str(tmp_path / "walks")
    for mode in ("no_cot", "cot", "coconut"):
        assert sub_config(c, mode, str(tmp_path), None, base).load_model_path == os.path.join(base, "best_model")
    assert sub_config(c, "walks", str(tmp_path), None, base).load_model_path == ""
    c.load_model_path = "/mine"
    assert sub_config(c, "cot", str(tmp_path), None, base).load_model_path == "/mine"


def test_table_prints_intervals_and_a_verdict():
    from latent_jax.tasks.coconut import format_table
    from latent_jax.train.metrics import wilson_interval

    lo, hi = wilson_interval(475, 500)
    assert 0.927 < lo < 0.929 and 0.965 < hi < 0.967  # 95% Wilson interval of 95.0% on 500
    assert wilson_interval(0, 0) == (0.0, 1.0)
    r = lambda acc: {"accuracy": acc, "mean_new_tokens": 3.0, "num_examples": 500}  # noqa: E731
    t = format_table({"no_cot": r(0.5), "cot": r(0.8), "coconut": r(0.96)})
    assert "92.9-97.0%" not in t and "93.9-97.4%" in t  # Coconut 96.0% on 500
    assert t.splitlines()[-1] == ("verdict: Coconut first, as in the paper; its 95% interval lies above both "
                                  "others' (significant); CoT > no-CoT")
    close = format_table({"no_cot": r(0.93), "cot": r(0.8), "coconut": r(0.95)})
    assert "Coconut first" in close and "(not significant)" in close and "no-CoT >= CoT" in close
    flipped = format_table({"no_cot": r(0.5), "cot": r(0.9), "coconut": r(0.6)})
    assert "NOT reproduced" in flipped
    assert "verdict" not in format_table({"cot": r(0.9)})


def test_a_chain_stopped_by_max_steps_says_so_and_writes_no_table(tmp_path, capsys):
    """A chained run that config.max_steps stops ends the chain there (the later runs start from
    its model): no table and no results.json, and the entry point's line names the run, the step
    of the planned total and how to resume."""
    sys.path.insert(0, ROOT)
    from configs.prosqa_coconut import get_config
    from latent_jax.main import stopped_message
    from latent_jax.tasks.coconut import run

    calls = []

    def run_one(config, workdir):
        calls.append(config.coconut_mode)
        if config.coconut_mode == "cot":
            return {"stopped": True, "step": 5, "total_steps": 40, "history": [], "best": None}
        return {"stopped": False, "step": 40, "test": {"accuracy": 0.5, "mean_new_tokens": 2.0, "num_examples": 8}}

    c = get_config("smoke")
    c.max_steps = 5
    out = run(c, str(tmp_path), run_one=run_one)
    assert calls == ["walks", "no_cot", "cot"]
    assert out["stopped"] and out["run"] == "CoT" and out["not_run"] == ["Coconut"]
    printed = capsys.readouterr().out
    assert "method" not in printed and "accuracy" not in printed  # no (partial) table
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "results_table.txt").exists()
    msg = stopped_message(out, c, str(tmp_path))
    assert "stopped early in the CoT run at step 5 of 40 (config.max_steps=5)" in msg
    assert "not run: Coconut" in msg and f"--workdir {tmp_path}" in msg and "--config.max_steps" in msg
    assert stopped_message({"stopped": False}, c, str(tmp_path)) is None
