"""The multimodal Coconut loop (latent_jax.train.mm_loop) on tiny fixtures, in process."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(name: str, fx: str, **over):
    s = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "configs", name))
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    c = mod.get_config("smoke")
    c.fixtures_dir = fx
    c.data.max_train = 2
    c.data.max_eval = 2
    c.eval.max_new_tokens = 2
    for k, v in over.items():
        node, *path = k.split(".")
        tgt = c
        for p in [node, *path][:-1]:
            tgt = tgt[p]
        tgt[[node, *path][-1]] = v
    return c


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return str(tmp_path_factory.mktemp("mm_fx"))


def test_pause_as_thought_feeds_no_hidden_states(fx, tmp_path, monkeypatch):
    """ablation=pause_as_thought reaches the loss and generation as feedback=False (and
    coconut as feedback=True), so the stage-1 losses of the two runs differ."""
    from latent_jax.train import mm_loop

    seen = {"loss": [], "generate": []}
    loss0, gen0 = mm_loop.coconut_loss, mm_loop.coconut_generate

    def loss(*a, **kw):
        seen["loss"].append(kw.get("feedback", True))
        return loss0(*a, **kw)

    def gen(*a, **kw):
        seen["generate"].append(kw.get("feedback", True))
        return gen0(*a, **kw)

    monkeypatch.setattr(mm_loop, "coconut_loss", loss)
    monkeypatch.setattr(mm_loop, "coconut_generate", gen)
    res = {}
    for abl in ("pause_as_thought", "none"):
        for v in seen.values():
            v.clear()
        res[abl] = mm_loop.run(_config("aokvqa_coconut.py", fx, **{"coconut.ablation": abl}), str(tmp_path / abl))
        assert seen["loss"] and seen["generate"]
        assert set(seen["loss"]) == set(seen["generate"]) == {abl == "none"}, (abl, seen)
    h_pause, h_coconut = res["pause_as_thought"]["history"], res["none"]["history"]
    assert [h["stage"] for h in h_pause] == [h["stage"] for h in h_coconut] == [0, 1]
    assert h_pause[0]["loss"] == pytest.approx(h_coconut[0]["loss"], rel=1e-5)  # stage 0: no latents
    assert abs(h_pause[1]["loss"] - h_coconut[1]["loss"]) > 1e-6
    assert json.load(open(tmp_path / "none" / "results.json"))["mode"] == "coconut"
