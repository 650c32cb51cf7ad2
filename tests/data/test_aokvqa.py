"""A-OKVQA: reading, MC and direct-answer scoring (min(1, matches/3)), rationales as steps."""

import pytest

from latent_jax.data import aokvqa as ak
from latent_jax.testing import write_aokvqa_fixture

ROW = {"question": "What color?", "choices": ["red", "blue", "green", "black"], "correct_choice_idx": 1,
       "direct_answers": ["blue"] * 2 + ["navy"] * 5 + ["teal"] * 3, "rationales": ["It is blue. ", " Sky."]}


def test_scoring():
    assert ak.mc_correct("blue", ROW) == 1 and ak.mc_correct("B.", ROW) == 1 and ak.mc_correct("red", ROW) == 0
    assert ak.mc_correct("The answer is blue.", ROW) == 1
    assert ak.direct_answer_accuracy("blue", ROW) == pytest.approx(2 / 3)
    assert ak.direct_answer_accuracy("navy", ROW) == 1.0
    assert ak.direct_answer_accuracy("purple", ROW) == 0.0
    assert ak.cot_steps(ROW) == ["It is blue.", "Sky."] and ak.answer_text(ROW) == "blue"
    r = ak.results([{"mc_correct": 1, "da_accuracy": 1.0}, {"mc_correct": 0, "da_accuracy": 1 / 3}])
    assert r["mc_accuracy"] == 0.5 and r["da_accuracy"] == pytest.approx(2 / 3)


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
