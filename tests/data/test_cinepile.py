"""CinePile: reading, filters, missing clips, official-style answer scoring, results.json."""

import pytest

from latent_jax.data import cinepile as cp
from latent_jax.data.mm_fixtures import write_cinepile_fixture

KEY_POS, KEY = 1, "The dog runs"


@pytest.mark.parametrize("resp,ok", [
    ("B", 1), ("b", 1), ("A", 0),                                   # bare letter
    ("Answer: B) The dog runs", 1), ("**Answer:** B", 1),           # official format, markdown asterisks
    ("Answer: B) The cat sleeps", 0),                               # letter with wrong text
    ("Answer: C) The dog runs", 0),                                 # wrong letter, right text
    ("B. the dog runs.", 1), ("B) something else", 0),
    ("I think the dog runs away quickly", 1), ("the cat sleeps", 0),  # text only
    ("", 0), ("I don't know", 0), ("**", 0),                        # no answer
])
def test_scoring_tricky_responses(resp, ok):
    assert cp.score_response(resp, KEY_POS, KEY) == ok


def test_read_filter_and_missing_clips(tmp_path):
    root = write_cinepile_fixture(str(tmp_path / "cp"), n_train=6, n_test=9, n_clips=3, num_frames=4)
    rows = cp.load_rows(root, "test")
    assert len(rows) == 9 and set(cp.FIELDS) <= set(rows[0])
    hard = cp.filter_rows(rows, use_hard_split=True)
    assert hard and all(r["hard_split"] == "True" for r in hard)
    vis = cp.filter_rows(rows, visual_reliance=True)
    assert vis and all(r["visual_reliance"] == "True" for r in vis)
    two = cp.filter_rows(rows, max_videos=2)
    assert len({r["yt_clip_link"] for r in two}) == 2 and len(two) == 6
    import os
    os.remove(os.path.join(root, "clips", cp.clip_id(rows[0]["yt_clip_link"]) + ".mp4"))
    ex, st = cp.build_examples(rows, os.path.join(root, "clips"), fallback="skip")
    assert st["missing_clips"] == 3 and st["skipped"] == 3 and len(ex) == 6
    ex, st = cp.build_examples(rows, os.path.join(root, "clips"), fallback="subtitles")
    assert len(ex) == 9 and st["subtitles_only"] == 3 and sum(e.clip is None for e in ex) == 3
    p = cp.format_prompt(rows[0])
    assert "- A) " in p and "- E) " in p and "Subtitles" in p
    with pytest.raises(FileNotFoundError, match="config.data.path"):
        cp.load_rows(str(tmp_path / "nowhere"), "test")


def test_results_breakdown():
    recs = [{"correct": 1, "question_category": "Temporal", "hard_split": "True", "visual_reliance": "False"},
            {"correct": 0, "question_category": "Temporal", "hard_split": "False", "visual_reliance": "False"},
            {"correct": 1, "question_category": "Theme", "hard_split": "False", "visual_reliance": "True"}]
    r = cp.results(recs)
    assert r["accuracy"] == pytest.approx(2 / 3)
    assert r["accuracy_by_question_category"] == {"Temporal": 0.5, "Theme": 1.0}
    assert r["accuracy_by_hard_split"] == {"False": 0.5, "True": 1.0}
    assert r["accuracy_by_visual_reliance"] == {"False": 0.5, "True": 1.0}


def test_clip_id():
    assert cp.clip_id("https://www.youtube.com/watch?v=abcDEF12345") == "abcDEF12345"
    assert cp.clip_id("https://youtu.be/abcDEF12345") == "abcDEF12345"
    with pytest.raises(ValueError):
        cp.clip_id("not a link")
