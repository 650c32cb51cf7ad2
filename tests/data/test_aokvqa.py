"""A-OKVQA: reading, MC and direct-answer scoring (min(1, matches/3)), rationales as steps."""

import pytest

from latent_jax.data import aokvqa as ak
from latent_jax.testing import write_aokvqa_fixture

ROW = {"question": "What color?", "choices": ["red", "blue", "green", "black"], "correct_choice_idx": 1,
       "direct_answers": ["blue"] * 2 + ["navy"] * 5 + ["teal"] * 3, "rationales": ["It is blue. ", " Sky."]}


def test_scoring_official_is_exact_strings():
    """The official evaluation (allenai/aokvqa eval_predictions.py): MC only the correct
    choice's exact text; DA exact matches among the direct answers / 3."""
    assert ak.mc_correct("blue", ROW) == 1 and ak.mc_correct(" blue ", ROW) == 1
    for not_a_choice in ("B.", "B", "Blue", "blue.", "The answer is blue.", "navy"):
        assert ak.mc_correct(not_a_choice, ROW) == 0, not_a_choice
    assert ak.mc_correct("red", ROW) == 0
    assert ak.direct_answer_accuracy("blue", ROW) == pytest.approx(2 / 3)
    assert ak.direct_answer_accuracy("navy", ROW) == 1.0
    assert ak.direct_answer_accuracy("Navy", ROW) == 0.0 and ak.direct_answer_accuracy("navy.", ROW) == 0.0
    assert ak.direct_answer_accuracy("B", ROW) == 0.0  # a letter is not a direct answer
    assert ak.direct_answer_accuracy("purple", ROW) == 0.0
    assert ak.cot_steps(ROW) == ["It is blue.", "Sky."] and ak.answer_text(ROW) == "blue"
    # the prediction is the text after the last ###
    s = ak.score("It is not red. ### blue", ROW)
    assert s == {"mc_correct": 1, "da_accuracy": pytest.approx(2 / 3), "difficult_direct_answer": False}
    assert ak.score("### red ### navy", ROW)["da_accuracy"] == 1.0
    with pytest.raises(ValueError, match="eval.scorer"):
        ak.mc_correct("blue", ROW, "fuzzy")


def test_results_da_mean_leaves_out_difficult_questions():
    r = ak.results([{"mc_correct": 1, "da_accuracy": 1.0, "difficult_direct_answer": False},
                    {"mc_correct": 0, "da_accuracy": 1 / 3, "difficult_direct_answer": False},
                    {"mc_correct": 1, "da_accuracy": 0.0, "difficult_direct_answer": True}])
    assert r["mc_accuracy"] == pytest.approx(2 / 3) and r["n"] == 3  # MC keeps every question
    assert r["da_accuracy"] == pytest.approx(2 / 3) and r["da_n"] == 2
    assert r["scorer"] == "official" and ak.results([], "lenient")["scorer"] == "lenient"


def official_reference(rows: list[dict], preds: dict, multiple_choice: bool) -> float:
    """The official eval_aokvqa (strict=False), restated: a percentage."""
    if not multiple_choice:
        rows = [r for r in rows if r["difficult_direct_answer"] is False]
    acc = []
    for r in rows:
        p = preds[r["question_id"]]
        if multiple_choice:
            acc.append(float(p == r["choices"][r["correct_choice_idx"]]))
        else:
            acc.append(min(1.0, sum(p == a for a in r["direct_answers"]) / 3.0))
    return sum(acc) / len(acc) * 100


def test_split_scores_equal_the_official_evaluation():
    rows = [dict(ROW, question_id="a", difficult_direct_answer=False),
            dict(ROW, question_id="b", difficult_direct_answer=True, direct_answers=["teal"] * 10),
            dict(ROW, question_id="c", difficult_direct_answer=False, correct_choice_idx=3),
            dict(ROW, question_id="d", difficult_direct_answer=False)]
    responses = {"a": "Sky. ### navy", "b": "### blue", "c": "### black", "d": "### B"}
    preds = {q: ak.final_answer(t) for q, t in responses.items()}
    recs = [ak.score(responses[r["question_id"]], r) for r in rows]
    res = ak.results(recs)
    assert 100 * res["mc_accuracy"] == pytest.approx(official_reference(rows, preds, True))
    assert 100 * res["da_accuracy"] == pytest.approx(official_reference(rows, preds, False))
    assert (100 * res["mc_accuracy"], 100 * res["da_accuracy"]) == (pytest.approx(50.0), pytest.approx(100 / 3))


def test_lenient_scorer():
    """The named lenient scorer: case, punctuation, 'the answer is', a standing letter, a single
    contained choice; a prediction that is itself a direct answer is never replaced by a choice."""
    L = "lenient"
    assert ak.mc_correct("B.", ROW, L) == 1 and ak.mc_correct("(b)", ROW, L) == 1 and ak.mc_correct("red", ROW, L) == 0
    assert ak.mc_correct("The answer is Blue.", ROW, L) == 1
    assert ak.direct_answer_accuracy("Navy.", ROW, L) == 1.0
    assert ak.direct_answer_accuracy("B", ROW, L) == pytest.approx(2 / 3)  # the choice it names
    row = {"choices": ["red", "blue", "green", "black"], "correct_choice_idx": 1,
           "direct_answers": ["light blue"] * 3 + ["blue"] * 7}
    # "light blue" is itself a direct answer: 3 matches, not the 7 of the choice "blue"
    assert ak.direct_answer_accuracy("light blue", dict(row, direct_answers=["light blue"] * 3 + ["sky"] * 7), L) == 1.0
    assert ak.direct_answer_accuracy("light blue", dict(row, direct_answers=["light blue"] * 1 + ["blue"] * 9), L) \
        == pytest.approx(1 / 3)
    dc = {"choices": ["boston", "chicago", "new york", "washington"], "correct_choice_idx": 3,
          "direct_answers": ["d.c."] * 4 + ["washington"] * 6}
    assert ak.predicted_choice("d.c.", dc["choices"]) is None  # not the letter D
    assert ak.direct_answer_accuracy("d.c.", dc, L) == 1.0
    assert ak.direct_answer_accuracy("d.c.", dict(dc, direct_answers=["d.c."] * 2 + ["dc"] * 8), L) == \
        pytest.approx(2 / 3)
    assert ak.predicted_choice("D. washington", dc["choices"]) == 3 and ak.predicted_choice("d", dc["choices"]) == 3


def test_read(tmp_path):
    import json
    import os

    root = write_aokvqa_fixture(str(tmp_path / "ak"), n_train=3, n_val=2)
    rows = ak.load_rows(root, "val")
    assert len(rows) == 2 and len(rows[0]["direct_answers"]) == 10
    assert rows == json.load(open(os.path.join(root, "aokvqa_v1p0_val.json")))  # datasets keeps every value
    assert os.path.exists(ak.image_path(os.path.join(root, "coco"), "val", rows[0]["image_id"]))
    with pytest.raises(FileNotFoundError, match="config.data.path"):
        ak.load_rows(str(tmp_path / "missing"), "val")


def test_read_saved_dataset_and_errors(tmp_path):
    import datasets

    from latent_jax.testing import aokvqa_rows

    rows = aokvqa_rows(4, seed=2, split="val")
    datasets.DatasetDict({"val": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    assert ak.load_rows(str(tmp_path / "dd"), "val") == rows
    with pytest.raises(FileNotFoundError) as e:
        ak.load_rows("nobody-here/no-such-dataset", "val")
    assert "\n" not in str(e.value) and "config.data.path" in str(e.value)
    embedded = [{k: v for k, v in r.items() if k != "image_id"} for r in rows]
    datasets.DatasetDict({"val": datasets.Dataset.from_list(embedded)}).save_to_disk(str(tmp_path / "emb"))
    with pytest.raises(ValueError, match="no image_id"):
        ak.load_rows(str(tmp_path / "emb"), "val")
