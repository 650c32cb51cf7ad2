"""Multimodal Coconut on the Trainer (tiny random InternVL3, A-OKVQA rows in the real schema,
built once per module): keep-best by validation accuracy with the best epoch exported and
scored, evaluation at the trained thought count, the A-OKVQA answer delimiter, and the
exported Orbax VLM checkpoint converted to HF and reloaded by transformers with equal logits."""

import importlib.util
import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(spec: str, fx: str):
    path, preset = spec.split(":")
    s = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "configs", path))
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    c = mod.get_config(preset)
    c.fixtures_dir = fx
    return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """aokvqa smoke runs: a CoT run whose validation accuracy is 0.5 after epoch 1 and 0.0
    after epoch 2 (so the best model is epoch 1's); a chained CoT -> Coconut run; a Coconut run
    scheduled up to 3 thoughts but trained for 2 epochs (stages 0 and 1)."""
    from latent_jax.tasks import coconut as text_task
    from latent_jax.tasks import coconut_mm, coconut_model

    out = tmp_path_factory.mktemp("mm_task")
    fx = str(out / "fx")
    res = {"_out": out}
    real_score, val_acc = text_task.CoconutTask.score, iter([0.5, 0.0])

    def score(self, params, data, stage, seed, out_dir=None, desc="eval", split="eval"):
        r = real_score(self, params, data, stage, seed, out_dir, desc, split)
        if split == "val":
            r["accuracy"] = next(val_acc)
        return r

    calls = []
    real_gen = coconut_model.coconut_generate  # CoconutTask.generate's decoding

    def gen(*a, **kw):
        calls.append(kw["num_latent"])
        return real_gen(*a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(text_task.CoconutTask, "score", score)
        c = _config("aokvqa_cot.py:smoke", fx)
        res["best"] = coconut_mm.run(c, str(out / "best"))
    loads = []
    real_load = coconut_mm.load_vlm_any

    def load(path, *a, **kw):
        loads.append(str(path))
        return real_load(path, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(coconut_mm, "load_vlm_any", load)
        c = _config("aokvqa_coconut.py:smoke", fx)
        c.chain = "cot,coconut"
        res["chain"] = coconut_mm.run(c, str(out / "chain"))
        res["chain_loads"] = loads
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(coconut_model, "coconut_generate", gen)
        c = _config("aokvqa_coconut.py:smoke", fx)
        c.coconut.max_latent_stage = 3
        res["thoughts"] = coconut_mm.run(c, str(out / "thoughts"))
        res["gen_latents"] = calls
    return res


def test_keep_best_by_validation_accuracy(runs):
    """The best epoch by validation accuracy (the first) is exported and scored, not the last
    epoch and not the one with the lowest training loss."""
    from latent_jax.models.hf_vlm import load_vlm_any
    from latent_jax.train.checkpoint import TrainCheckpointer

    wd = runs["_out"] / "best"
    hist = runs["best"]["history"]
    assert [h["accuracy"] for h in hist] == [0.5, 0.0]
    ck = TrainCheckpointer(str(wd / "checkpoints"), keep_best=2)
    steps = sorted(ck.all_steps())
    assert len(steps) == 2  # epoch ends: steps 2 (best) and 4 (latest)
    first, _ = ck.restore(steps[0])
    last, _ = ck.restore(steps[-1])
    ck.close()
    _, best, _ = load_vlm_any(str(wd / "best_model"))
    flat = lambda t: np.concatenate([np.ravel(x) for x in __import__("jax").tree.leaves(t)])  # noqa: E731
    np.testing.assert_array_equal(flat(best["language_model"]), flat(first["params"]))
    assert np.abs(flat(best["language_model"]) - flat(last["params"])).max() > 0
    res = json.load(open(wd / "results.json"))
    assert res["n"] == 2 and res["history"] == json.loads(json.dumps(hist))
    assert len(open(wd / "predictions.jsonl").read().splitlines()) == 2


def test_eval_thoughts_equal_trained_thoughts(runs):
    """max_latent_stage=3 but 2 epochs of 1 stage each: training reaches stage 1 (one thought),
    and validation and the final evaluation generate with one thought, not three."""
    r = runs["thoughts"]
    assert [h["stage"] for h in r["history"]] == [0, 1]
    assert r["eval_stage"] == 1
    # per epoch's validation (stage of the epoch) and the final evaluation (trained stage)
    assert set(runs["gen_latents"]) == {0, 1} and runs["gen_latents"][-1] == 1


def test_aokvqa_rationale_naming_a_wrong_option_scores_the_answer():
    """Targets end in '### answer'; scoring reads what follows the last '###', so a rationale
    that names another option (or several) does not decide the score."""
    from latent_jax.data.aokvqa import ANSWER_DELIMITER, final_answer
    from latent_jax.tasks.coconut_mm import MMItem, score_item

    row = {"question_id": "q", "question": "What flies?", "choices": ["ball", "kite", "dog", "car"],
           "correct_choice_idx": 1, "direct_answers": ["kite"] * 10, "rationales": ["r"]}
    cfg = _config("aokvqa_coconut.py:", "")
    it = MMItem("", "", ("image", "x.jpg"), ["r"], f"{ANSWER_DELIMITER} kite", row)
    text = "It is not a ball and not a dog; the string goes up.\n### kite"
    r = score_item(cfg, it, text)
    assert r["mc_correct"] == 1 and r["da_accuracy"] == 1.0
    assert final_answer(text) == "kite" and final_answer("kite") == "kite"
    wrong = score_item(cfg, it, "It is a kite that flies. ### ball")
    assert wrong["mc_correct"] == 0 and wrong["da_accuracy"] == 0.0


def test_aokvqa_scorer_is_official_by_default_and_named_in_results():
    """score_item follows config.eval.scorer (official: exact choice text); the split results
    name the scorer and leave difficult_direct_answer questions out of the DA mean."""
    from latent_jax.tasks.coconut_mm import MMItem, MMScorer, score_item

    row = {"question_id": "q", "question": "What flies?", "choices": ["ball", "kite", "dog", "car"],
           "correct_choice_idx": 1, "direct_answers": ["kite"] * 10, "difficult_direct_answer": True}
    cfg = _config("aokvqa_coconut.py:", "")
    it = MMItem("", "", ("image", "x.jpg"), ["r"], "### kite", row)
    r = score_item(cfg, it, "### B")
    assert r["mc_correct"] == 0 and r["da_accuracy"] == 0.0 and r["difficult_direct_answer"] is True
    easy = dict(score_item(cfg, it, "### kite"), difficult_direct_answer=False)
    res = MMScorer(cfg, {}).results([r, easy])
    assert res["scorer"] == "official" and res["mc_accuracy"] == 0.5 and res["da_accuracy"] == 1.0
    cfg.eval.scorer = "lenient"
    assert score_item(cfg, it, "### B")["mc_correct"] == 1
    assert MMScorer(cfg, {}).results([r])["scorer"] == "lenient"


def test_best_model_converts_to_hf_with_equal_logits(runs, tmp_path):
    """The run's Orbax VLM checkpoint (vision tower + trained LM with the Coconut tokens) ->
    `convert orbax-to-hf` -> transformers InternVL: same logits as latent_jax on the checkpoint,
    with an image in the prompt."""
    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    from latent_jax.convert import main as convert
    from latent_jax.models.hf_vlm import load_vlm_any
    from latent_jax.models.multimodal import VisionLanguageModel

    ck, out = str(runs["_out"] / "best" / "best_model"), str(tmp_path / "hf")
    assert convert(["orbax-to-hf", "--ckpt", ck, "--out", out]) == 0
    cfg, params, _ = load_vlm_any(ck)
    hf = transformers.InternVLForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
    n = cfg.tokens_per_tile
    V = cfg.text.vocab_size
    ids = np.array([[1, 5, 6] + [cfg.image_token_id] * n + [7, V - 1]], np.int64)  # V - 1: a Coconut token
    mask = np.ones_like(ids)
    px = np.random.default_rng(0).standard_normal((1, 3, 28, 28)).astype(np.float32)
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), pixel_values=torch.tensor(px)).logits
    got = VisionLanguageModel(cfg).apply({"params": jax.device_get(params)}, jnp.asarray(ids), pixel_values=jnp.asarray(px),
                                         attention_mask=jnp.asarray(mask)).logits
    assert ref.shape[-1] == V
    assert np.abs(np.asarray(got) - ref.detach().numpy()).max() <= 1e-4


def test_chained_multimodal_runs_start_coconut_from_the_best_cot_model(runs):
    """chain='cot,coconut': two runs in workdir/<mode>/, the Coconut run loading the CoT run's
    best_model (an Orbax VLM checkpoint), one table and results.json for the chain."""
    wd = runs["_out"] / "chain"
    r = runs["chain"]
    assert r["modes"] == ["cot", "coconut"]
    assert set(r["test"]) == {"cot", "coconut"} and all(r["test"][m]["n"] == 2 for m in r["test"])
    # ... the CoT run's best model scored, then loaded to start the Coconut run, whose best is scored
    assert runs["chain_loads"][-3:] == [str(wd / m / "best_model") for m in ("cot", "cot", "coconut")]
    assert (wd / "cot" / "best_model").is_dir() and (wd / "coconut" / "best_model").is_dir()
    assert json.load(open(wd / "results.json"))["modes"] == ["cot", "coconut"]
    assert os.path.exists(wd / "results_table.txt")


def test_language_model_dtype_remat_and_scan_come_from_the_config(tmp_path):
    """model.dtype / param_dtype / remat_policy / scan_layers reach the VLM's language model
    (a 5.6B Phi-4-MM would otherwise train in float32 without remat)."""
    import jax
    import jax.numpy as jnp

    from latent_jax.tasks.coconut_mm import load_model
    from latent_jax.testing import make_tiny_vlm

    c = _config("aokvqa_coconut.py:smoke", "")
    c.model.path = make_tiny_vlm("internvl", str(tmp_path / "vlm"))
    c.model.dtype, c.model.param_dtype, c.model.remat_policy, c.model.scan_layers = "bfloat16", "bfloat16", "full", True
    cfg, params, _, tok, ids = load_model(c)
    t = cfg.text
    assert (t.dtype, t.remat_policy, t.scan_layers) == ("bfloat16", "full", True)
    lm = params["language_model"]
    assert "layers" in lm and not any(k.startswith("layers_") for k in lm)
    assert {x.shape[0] for x in jax.tree.leaves(lm["layers"])} == {t.num_hidden_layers}
    assert {jnp.asarray(x).dtype for x in jax.tree.leaves(lm)} == {jnp.dtype("bfloat16")}
    assert max(ids.start_id, ids.latent_id, ids.end_id) < t.vocab_size  # the Coconut tokens have embedding rows
