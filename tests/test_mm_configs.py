"""Every multimodal config's :smoke preset runs train + eval end to end on one shared set of
fixtures (tiny random InternVL3 / Phi-4-MM, synthetic images and videos, rows in the real
schemas) built once per module:

- cinepile_coconut through `python -m latent_jax.main` in a subprocess (the slow tier);
- the others through the same path main takes (config file -> latent_jax.main.resolve_workflow
  -> run) in process, so compiled steps are shared between presets;
- the pause_as_thought ablation reaches the loss and generation as feedback=False;
- a run stopped at max_steps resumes from its checkpoint to the uninterrupted run's losses.

Missing paths give a one-line error naming the config key."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
IN_PROCESS = ["cinepile_finetune.py:smoke", "aokvqa_cot.py:smoke", "aokvqa_coconut.py:smoke", "aokvqa_eval.py:smoke"]


def _config(spec: str, fx: str):
    path, preset = spec.split(":")
    s = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "configs", path))
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    c = mod.get_config(preset)
    c.fixtures_dir = fx
    return c


def _build_fixtures(fx: str) -> None:
    """What the :smoke presets build on first use (latent_jax.tasks.coconut_mm), once for all."""
    from latent_jax.tasks.coconut_mm import ensure_smoke_fixtures

    for spec in ("cinepile_coconut.py:smoke", "aokvqa_coconut.py:smoke"):
        ensure_smoke_fixtures(_config(spec, fx), fx)


@pytest.fixture(scope="module")
def fixtures_dir(tmp_path_factory):
    fx = str(tmp_path_factory.mktemp("mm_fx"))
    _build_fixtures(fx)
    return fx


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fixtures_dir):
    """Runs every in-process preset once (plus the ablation and resume runs); their results."""
    from latent_jax.main import resolve_workflow
    from latent_jax.tasks import coconut as text_loop
    from latent_jax.tasks import coconut_mm as mm_loop
    from latent_jax.tasks import coconut_model

    out = tmp_path_factory.mktemp("mm_runs")
    fx = fixtures_dir
    res: dict = {"_fx": fx, "_out": out}
    feedback = {"loss": [], "generate": []}
    # the multimodal workflow is the text CoconutTask: one coconut_loss, one coconut_generate
    loss0, gen0 = text_loop.coconut_loss, coconut_model.coconut_generate  # CoconutTask.generate's decoding

    def loss(*a, **kw):
        feedback["loss"].append(kw.get("feedback", True))
        return loss0(*a, **kw)

    def gen(*a, **kw):
        feedback["generate"].append(kw.get("feedback", True))
        return gen0(*a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(text_loop, "coconut_loss", loss)
        mp.setattr(coconut_model, "coconut_generate", gen)
        for spec in IN_PROCESS:
            c = _config(spec, fx)
            res[spec] = resolve_workflow(c.workflow)(c, str(out / spec))
        for v in feedback.values():
            v.clear()
        c = _config("aokvqa_coconut.py:smoke", fx)
        c.coconut.ablation = "pause_as_thought"
        res["pause"] = mm_loop.run(c, str(out / "pause"))
        res["pause_feedback"] = {k: set(v) for k, v in feedback.items()}
    # resume: stop after 3 of 4 steps (inside epoch 2), then restart in the same workdir
    c = _config("aokvqa_coconut.py:smoke", fx)
    c.max_steps = 3
    res["stopped"] = mm_loop.run(c, str(out / "resume"))
    res["resumed"] = mm_loop.run(_config("aokvqa_coconut.py:smoke", fx), str(out / "resume"))
    return res


def _check(wd, name):
    res = json.load(open(os.path.join(wd, "results.json")))
    assert res["n"] == 2 and 0.0 <= res["accuracy"] <= 1.0, name
    assert len(open(os.path.join(wd, "predictions.jsonl")).read().splitlines()) == 2
    assert res["history"] and all(h["train_loss"] > 0 for h in res["history"])
    assert os.path.exists(os.path.join(wd, "metrics.jsonl"))
    return res


def test_cinepile_coconut_smoke_through_main(fixtures_dir, tmp_path):
    wd = str(tmp_path / "cinepile_coconut")
    p = subprocess.run(
        [sys.executable, "-m", "latent_jax.main", "--config=configs/cinepile_coconut.py:smoke", f"--workdir={wd}",
         f"--config.fixtures_dir={fixtures_dir}"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    rc, stdout, stderr = p.returncode, p.stdout, p.stderr
    assert rc == 0, stderr[-3000:]
    res = _check(wd, "cinepile_coconut")
    assert res["video_tokens"]["compression_ratio"] == 2.0  # HiCo: 4 -> 2 tokens per frame
    assert "accuracy_by_question_category" in res and "accuracy_by_visual_reliance" in res
    assert res["mode"] == "coconut" and res["eval_stage"] == 1
    assert res["scorer"] == "official" and res["eval_data"]["unreadable"] == {}
    assert json.loads(stdout.strip().splitlines()[-1])["n"] == 2


def test_other_smoke_presets(runs):
    for spec in IN_PROCESS:
        res = _check(str(runs["_out"] / spec), spec)
        assert res == json.loads(json.dumps(runs[spec]))
        if spec.startswith("aokvqa"):
            assert "da_accuracy" in res and "mc_accuracy" in res
    assert runs["cinepile_finetune.py:smoke"]["mode"] == "no_cot"
    assert runs["aokvqa_cot.py:smoke"]["mode"] == "cot"
    assert [h["stage"] for h in runs["aokvqa_coconut.py:smoke"]["history"]] == [0, 1]
    assert runs["aokvqa_eval.py:smoke"]["eval_stage"] == 1


def test_pause_as_thought_has_no_feedback(runs):
    """ablation=pause_as_thought: every loss and generation call gets feedback=False, so the
    stage-1 loss differs from coconut's while stage 0 (no latents) is the same."""
    assert runs["pause_feedback"] == {"loss": {False}, "generate": {False}}
    pause, coconut = runs["pause"]["history"], runs["aokvqa_coconut.py:smoke"]["history"]
    assert pause[0]["train_loss"] == pytest.approx(coconut[0]["train_loss"], rel=1e-5)
    assert abs(pause[1]["train_loss"] - coconut[1]["train_loss"]) > 1e-6


def test_resume_from_checkpoint(runs):
    """Stopped at max_steps=3 (mid epoch 2), restarted: same losses and results as one run."""
    assert runs["stopped"]["stopped"] and runs["stopped"]["step"] == 3
    assert len(runs["stopped"]["history"]) == 1
    full, resumed = runs["aokvqa_coconut.py:smoke"], runs["resumed"]
    assert [h["stage"] for h in resumed["history"]] == [0, 1]
    for a, b in zip(full["history"], resumed["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)
    assert resumed["accuracy"] == full["accuracy"]
    assert os.path.isdir(str(runs["_out"] / "resume" / "checkpoints"))


def test_missing_paths_one_line_error(tmp_path):
    """Checked in process with main's error formatting (a subprocess would only add start-up)."""
    from latent_jax.tasks import coconut_mm as mm_loop

    c = _config("cinepile_coconut.py:", "")
    c.smoke = False
    with pytest.raises(FileNotFoundError) as e:
        mm_loop.run(c, str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("config.model.path=") and "--config.model.path" in msg


def test_eval_without_media_names_the_fix(tmp_path):
    """Every clip (image) missing: one line naming the prepare command (COCO directory), not
    accuracy 0.0 over n=0; an unknown scorer stops the run before any model is loaded."""
    from latent_jax.testing import write_aokvqa_fixture, write_cinepile_fixture
    from latent_jax.tasks import coconut_mm as mm_loop

    c = _config("cinepile_coconut.py:", "")
    c.data.path = write_cinepile_fixture(str(tmp_path / "cp"), n_train=2, n_test=3, make_clips=False)
    with pytest.raises(FileNotFoundError) as e:
        mm_loop.load_items(c, c.data.eval_split)
    assert "\n" not in str(e.value)
    assert f"prepare --root {c.data.path} --split test --max_videos 100`" in str(e.value)
    c.eval.scorer = "strict"
    with pytest.raises(ValueError, match=r"^config\.eval\.scorer='strict'"):
        mm_loop.run(c, str(tmp_path / "wd"))
    a = _config("aokvqa_eval.py:", "")
    a.data.path = write_aokvqa_fixture(str(tmp_path / "ak"), n_train=1, n_val=2)
    a.data.coco_dir = str(tmp_path / "empty_coco")
    os.makedirs(a.data.coco_dir)
    with pytest.raises(FileNotFoundError, match=r"none of the 2 val images .*config\.data\.coco_dir") as e:
        mm_loop.load_items(a, "val")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("path", ["cinepile_coconut.py", "aokvqa_eval.py"])
def test_config_fields(path):
    c = _config(f"{path}:", "")
    assert c.workflow == "multimodal_coconut" and c.coconut.ablation == "none"
    if path.startswith("cinepile"):
        for k in ("num_frames", "max_videos", "use_hard_split", "visual_reliance", "use_hico"):
            assert k in c.data
        assert c.model.family == "phi4mm" and c.optim.learning_rate == 5e-5
        assert c.eval.scorer == "official" and 0 < c.data.max_unreadable_fraction < 1
    else:
        assert c.mode == "eval" and c.coconut_mode == "coconut"
        assert _config("aokvqa_eval.py:vanilla", "").coconut_mode == "no_cot"
        assert _config("aokvqa_eval.py:cot", "").eval.temperature == 1.0
