"""A trained Coconut model from the command line: its best_model carries coconut.json, and
`python -m latent_jax.generate` runs its continuous thoughts as the run's evaluation does (the
same prompts, the same tokens as test/predictions.jsonl); --thoughts overrides; <|latent|> in a
prompt for a model without coconut.json is a one-line error."""

import json
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The smoke preset as one Coconut run of one epoch (chain=coconut, num_epochs=1: the final
    stage, 2 thoughts per question) on tiny data and a 1-layer model."""
    sys.path.insert(0, ROOT)
    from configs.prosqa_coconut import get_config
    from latent_jax.tasks.coconut import run

    c = get_config("smoke")
    c.chain, c.num_epochs = "coconut", 1
    c.data.gen.train, c.data.gen.valid, c.data.gen.test = 16, 4, 8
    c.model.num_hidden_layers = 1
    c.batch_size = 8
    c.coconut.max_latent_stage = 2
    c.decode_thoughts = 0
    d = str(tmp_path_factory.mktemp("coconut_run"))
    run(c, d)
    rows = [json.loads(line) for line in open(os.path.join(d, "coconut", "test", "predictions.jsonl"))]
    return c, d, rows


def _run_json(capsys, argv):
    from latent_jax.generate import main

    code = main(argv + ["--json"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    return [json.loads(line) for line in cap.out.strip().splitlines()]


def _eval_prompts(config, workdir):
    """The test prompts of the run's evaluation, as token ids (tasks/coconut.py's own pieces)."""
    from latent_jax.data.pipeline import load_split
    from latent_jax.data.tokenizer import add_coconut_tokens, load_tokenizer
    from latent_jax.latent.curriculum import eval_prompt, problem_format
    from latent_jax.tasks.coconut import curriculum_config, sub_config

    sub = sub_config(config, "coconut", workdir, None)
    cc = curriculum_config(sub)
    tok = load_tokenizer(os.path.join(workdir, "tokenizer"))
    ids = add_coconut_tokens(tok)
    exs = load_split(os.path.join(workdir, "data", "prosqa_graph_test.json"), tok, cc,
                     fmt=problem_format(sub.data.format))
    return [list(eval_prompt(e, cc.final_stage, cc, ids).input_ids) for e in exs], ids


def test_generate_reproduces_the_evaluation_predictions(trained, tmp_path, capsys):
    config, workdir, rows = trained
    model = os.path.join(workdir, "coconut", "best_model")
    meta = json.load(open(os.path.join(model, "coconut.json")))
    assert meta["thoughts"] == 2 and meta["coconut_mode"] == "coconut"
    assert meta["tokens"]["latent"] == "<|latent|>" and meta["problem_format"]["answer_delimiter"] == "[A]"
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps({"question": r["question"]}) + "\n" for r in rows))
    prompts, ids = _eval_prompts(config, workdir)
    for bs in ("8", "3"):  # the evaluation's batch, and another batching
        out = _run_json(capsys, ["--model", model, "--prompts-file", str(qfile), "--batch-size", bs])
        assert [o["input_ids"] for o in out] == prompts  # the evaluation's prompts: question, 2 latents
        assert all(o["thoughts"] == 2 and o["input_ids"].count(ids.latent_id) == 2 for o in out)
        assert [o["output_ids"] for o in out] == [r["generated_ids"] for r in rows]
        assert [o["text"] for o in out] == [r["generated_text"] for r in rows]
    # one --question, and the same question as a --prompt with the latents typed in
    (one,) = _run_json(capsys, ["--model", model, "--question", rows[1]["question"]])
    assert one["output_ids"] == rows[1]["generated_ids"] and one["input_ids"] == prompts[1]
    (typed,) = _run_json(capsys, ["--model", model, "--prompt", rows[1]["question"] + " <|latent|> <|latent|>"])
    assert typed["input_ids"] == prompts[1] and typed["output_ids"] == one["output_ids"]


def test_a_model_with_varied_answers_too(trained, tmp_path, capsys):
    """The same on a model whose answers differ from question to question (the one-epoch model
    answers nearly alike): the trained weights with noise added, saved as the run saves its best
    model (with its coconut.json), scored by the run's own eval mode."""
    import copy

    import jax
    import numpy as np

    from latent_jax.models.io import load_any, save_model
    from latent_jax.tasks.coconut import run

    config, workdir, rows = trained
    src = os.path.join(workdir, "coconut", "best_model")
    cfg, params = load_any(src)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: np.asarray(x) + 4 * (np.std(x) + 0.02) * rng.standard_normal(np.shape(x)).astype(
        np.float32), params)
    model = str(tmp_path / "coconut" / "best_model")
    save_model(model, params, cfg, src, extra_files={"coconut.json": open(os.path.join(src, "coconut.json")).read()})
    c = copy.deepcopy(config)
    c.mode, c.data.generate_dir = "eval", os.path.join(workdir, "data")
    run(c, str(tmp_path))
    capsys.readouterr()
    rows = [json.loads(line) for line in open(tmp_path / "coconut" / "test" / "predictions.jsonl")]
    assert len({tuple(r["generated_ids"]) for r in rows}) >= 3
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps({"question": r["question"]}) + "\n" for r in rows))
    out = _run_json(capsys, ["--model", model, "--prompts-file", str(qfile), "--batch-size", "3"])
    assert [o["output_ids"] for o in out] == [r["generated_ids"] for r in rows]
    assert [o["text"] for o in out] == [r["generated_text"] for r in rows]


def test_thoughts_override_and_plain_decoding(trained, capsys):
    _, workdir, rows = trained
    model = os.path.join(workdir, "coconut", "best_model")
    latent = json.load(open(os.path.join(model, "coconut.json")))["latent_ids"]["latent_id"]
    q = rows[0]["question"]
    (three,) = _run_json(capsys, ["--model", model, "--question", q, "--thoughts", "3"])
    (plain,) = _run_json(capsys, ["--model", model, "--question", q, "--thoughts", "0"])
    assert three["thoughts"] == 3 and three["input_ids"].count(latent) == 3
    assert plain["thoughts"] == 0 and latent not in plain["input_ids"]
    assert plain["input_ids"] == three["input_ids"][:-3]  # the question alone (graph format: no suffix)


def test_latent_tokens_for_a_model_without_coconut_json_are_an_error(trained, tmp_path, capsys):
    from latent_jax.generate import main

    _, workdir, rows = trained
    src = os.path.join(workdir, "coconut", "best_model")
    plain = str(tmp_path / "plain")
    shutil.copytree(src, plain)
    os.remove(os.path.join(plain, "coconut.json"))
    for argv in (["--prompt", rows[0]["question"] + " <|latent|>"], ["--question", rows[0]["question"]],
                 ["--prompt", rows[0]["question"], "--thoughts", "2"]):
        assert main(["--model", plain, *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
        assert "coconut" in err.lower()
