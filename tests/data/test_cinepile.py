"""CinePile: reading, filters, missing and unreadable clips, answer scoring with the official
CinePile evaluation's verdicts (and the opt-in lenient scorer), results.json."""

import os

import pytest

from latent_jax.data import cinepile as cp
from latent_jax.testing import write_cinepile_fixture

# choices: A) The dog  B) The man  C) The man's brother  D) Nobody  E) The woman; key B
KEY_POS, KEY = 1, "The man"

# Verdicts of the official rules (lmms-eval tasks/cinepile/utils.py): a bare letter, or the
# first "Answer:" + one letter + optional ")" "." + the rest of that line; a text given with
# the key's letter must equal the key text ignoring case; with no letter the whole response
# must equal the key text ignoring case.
OFFICIAL = [
    # right
    ("B", 1), ("b", 1), ("  B \n", 1), ("**B**", 1),
    ("Answer: B", 1), ("**Answer:** B", 1), ("answer: b", 1), ("Answer:B", 1), ("Final answer: B", 1),
    ("Answer: B) The man", 1), ("Answer: b) THE MAN", 1), ("Answer: B.", 1), ("Answer: B).", 1),
    ("Answer: B) The man\nbecause he arrives first", 1),  # only the answer line is the text
    ("Answer:\nB", 1), ("Answer: B\nThe man", 1),          # whitespace after the letter crosses lines
    ("The man", 1), ("the MAN", 1), ("  The man  ", 1),     # the option text alone
    ("I think so. Answer: B", 1),                           # the first "Answer:" anywhere
    ("Answer: bThe man", 1),                                # quirk: the letter need not stand alone
    # wrong
    ("A", 0), ("Answer: C", 0), ("Answer: C) The man", 0),  # another letter, even with the right text
    ("The man's brother", 0), ("Answer: B) The man's brother", 0),  # another option containing the key
    ("I think it is the man", 0), ("the man.", 0), ("Option B: the man", 0), ("B, the man", 0),
    ("(B)", 0), ("B)", 0), ("B.", 0), ("B) The man", 0),   # a letter without "Answer:"
    ("Answer: (B)", 0),                                     # "(" before the letter: no letter read
    ("Answer: B\nThe man is the one who leaves", 0),        # text is the next line, not the key
    ("Answer: Because the man leaves", 0),                  # quirk: option B with text "ecause ..."
    ("Answer: A) The man\nAnswer: B", 0),                   # only the first "Answer:" counts
    ("", 0), ("**", 0), ("I don't know", 0), ("F", 0),
]


@pytest.mark.parametrize("resp,ok", OFFICIAL)
def test_official_scoring(resp, ok):
    assert cp.score_response(resp, KEY_POS, KEY) == ok
    assert cp.score_response(resp, KEY_POS, KEY, scorer="official") == ok


def test_official_parse():
    assert cp.parse_official("**Answer:** b) The man\nmore") == ("B", "The man")
    assert cp.parse_official("Answer: B\nThe man is ...\nmore") == ("B", "The man is ...")
    assert cp.parse_official("B) The man") == (None, "B) The man")
    assert cp.parse_official(" e ") == ("E", "")


def test_official_text_only_response_needs_the_whole_key():
    """The issue's case: the project once scored this 1; the official rules say 0."""
    assert cp.score_response("I think the dog runs away quickly", 1, "The dog runs") == 0
    assert cp.score_response("the dog runs", 1, "The dog runs") == 1


def test_official_empty_key_text_accepts_the_letter():
    assert cp.score_response("Answer: B) anything", 1, "") == 1
    assert cp.score_response("Answer: C) anything", 1, "") == 0


@pytest.mark.parametrize("resp,official,lenient", [
    ("B) The man", 0, 1), ("(B)", 0, 1), ("I think it is the man", 0, 1), ("the man.", 0, 1),
    ("Answer: B) The man's brother", 0, 1), ("Answer: B\nThe man is here", 0, 1),
    ("Answer: B) The man", 1, 1), ("Answer: C) The man", 0, 0), ("the woman", 0, 0),
])
def test_lenient_scorer_is_opt_in(resp, official, lenient):
    assert cp.score_response(resp, KEY_POS, KEY) == official
    assert cp.score_response(resp, KEY_POS, KEY, scorer="lenient") == lenient


def test_unknown_scorer_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"config\.eval\.scorer='strict'.*official.*lenient") as e:
        cp.score_response("B", KEY_POS, KEY, scorer="strict")
    assert "\n" not in str(e.value)


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
    os.remove(os.path.join(root, "clips", cp.clip_id(rows[0]["yt_clip_link"]) + ".mp4"))
    ex, st = cp.build_examples(rows, os.path.join(root, "clips"), fallback="skip")
    assert st["missing_clips"] == 3 and st["skipped"] == 3 and len(ex) == 6
    ex, st = cp.build_examples(rows, os.path.join(root, "clips"), fallback="subtitles")
    assert len(ex) == 9 and st["subtitles_only"] == 3 and sum(e.clip is None for e in ex) == 3
    p = cp.format_prompt(rows[0])
    assert "- A) " in p and "- E) " in p and "Subtitles" in p
    with pytest.raises(FileNotFoundError, match="config.data.path"):
        cp.load_rows(str(tmp_path / "nowhere"), "test")


def test_every_clip_missing_is_an_error_naming_prepare(tmp_path):
    root = write_cinepile_fixture(str(tmp_path / "cp"), n_train=2, n_test=4, n_clips=2, make_clips=False)
    rows = cp.load_rows(root, "test")
    cmd = cp.prepare_command(root, "test", max_videos=100)
    with pytest.raises(FileNotFoundError) as e:
        cp.build_examples(rows, os.path.join(root, "clips"), "skip", prepare_cmd=cmd)
    msg = str(e.value)
    assert "\n" not in msg and "2 missing" in msg and "missing_clip=subtitles" in msg
    assert f"`python -m latent_jax.data.cinepile prepare --root {root} --split test --max_videos 100`" in msg
    ex, st = cp.build_examples(rows, os.path.join(root, "clips"), "subtitles", prepare_cmd=cmd)
    assert len(ex) == 4 and st["subtitles_only"] == 4  # the explicit fallback still works
    with pytest.raises(ValueError, match="use_hard_split"):
        cp.build_examples([], os.path.join(root, "clips"))


def _corrupt(path: str, how: str) -> None:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3] if how == "truncate" else os.urandom(len(data)))


def test_unreadable_clips_are_counted_reported_and_skipped(tmp_path, caplog):
    root = write_cinepile_fixture(str(tmp_path / "cp"), n_train=2, n_test=12, n_clips=4, num_frames=4)
    rows = cp.load_rows(root, "test")
    clips = os.path.join(root, "clips")
    paths = [os.path.join(clips, cp.clip_id(rows[i]["yt_clip_link"]) + ".mp4") for i in range(4)]
    _corrupt(paths[0], "truncate")
    os.remove(paths[1])
    with caplog.at_level("WARNING"):
        ex, st = cp.build_examples(rows, clips, "skip", max_unreadable=0.25)
    assert st["unreadable_clips"] == 3 and st["missing_clips"] == 3 and st["skipped"] == 6 and len(ex) == 6
    assert list(st["unreadable"]) == [paths[0]] and paths[0] in caplog.text
    assert {e.clip for e in ex} == set(paths[2:])
    ex, st = cp.build_examples(rows, clips, "subtitles", max_unreadable=0.25)
    assert len(ex) == 12 and st["subtitles_only"] == 6 and sum(e.clip is None for e in ex) == 6
    # a second unreadable clip: 2 of 4 > 0.25 stops the run with one line naming a path and the key
    _corrupt(paths[2], "random")
    with pytest.raises(ValueError) as e:
        cp.build_examples(rows, clips, "skip", max_unreadable=0.25, prepare_cmd=cp.prepare_command(root, "test"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"2 of 4 clips in {clips} are unreadable")
    assert "max_unreadable_fraction=0.25" in msg and paths[0] in msg and "prepare --root" in msg
    ex, st = cp.build_examples(rows, clips, "skip", max_unreadable=0.5)  # at the threshold: still runs
    assert len(ex) == 3 and set(st["unreadable"]) == {paths[0], paths[2]}
    with pytest.raises(ValueError, match="max_unreadable_fraction=2"):
        cp.build_examples(rows, clips, "skip", max_unreadable=2)


def test_prepare_command():
    assert cp.prepare_command("/d", "test") == "python -m latent_jax.data.cinepile prepare --root /d --split test"
    assert cp.prepare_command("/d", "train", "/d/clips", 5, True, True) == (
        "python -m latent_jax.data.cinepile prepare --root /d --split train --max_videos 5 --use_hard_split "
        "--visual_reliance")
    assert cp.prepare_command("/d", "test", "/c").endswith("--clips_dir /c")


def test_read_saved_datasets_sharded_parquet_and_hub_names(tmp_path):
    """The same rows from a save_to_disk DatasetDict, one saved split, sharded parquet; a hub
    name that cannot be reached (tests run offline) and a foreign schema are one-line errors."""
    import datasets

    from latent_jax.testing import cinepile_rows

    rows = cinepile_rows(5, seed=3)
    ds = datasets.Dataset.from_list(rows)
    datasets.DatasetDict({"test": ds, "train": ds.select(range(2))}).save_to_disk(str(tmp_path / "dd"))
    assert cp.load_rows(str(tmp_path / "dd"), "test") == rows
    assert len(cp.load_rows(str(tmp_path / "dd"), "train")) == 2
    with pytest.raises(ValueError, match="no 'val' split"):
        cp.load_rows(str(tmp_path / "dd"), "val")
    ds.save_to_disk(str(tmp_path / "one" / "test"))
    assert cp.load_rows(str(tmp_path / "one"), "test") == rows
    os.makedirs(tmp_path / "sh" / "data")
    ds.select(range(3)).to_parquet(str(tmp_path / "sh" / "data" / "test-00000-of-00002.parquet"))
    ds.select(range(3, 5)).to_parquet(str(tmp_path / "sh" / "data" / "test-00001-of-00002.parquet"))
    assert cp.load_rows(str(tmp_path / "sh"), "test") == rows
    with pytest.raises(FileNotFoundError) as e:
        cp.load_rows("nobody-here/no-such-dataset", "test")
    assert "\n" not in str(e.value) and str(e.value).startswith("config.data.path='nobody-here/no-such-dataset'")
    with pytest.raises(ValueError, match="config.data.clips_dir"):
        cp.default_clips_dir("tomg-group-umd/cinepile")
    assert cp.default_clips_dir("tomg-group-umd/cinepile", "/c") == "/c"
    assert cp.default_clips_dir(str(tmp_path)) == str(tmp_path / "clips")
    datasets.Dataset.from_list([{"question": "q"}]).to_parquet(str(tmp_path / "test.parquet"))
    with pytest.raises(ValueError, match="lacks CinePile fields"):
        cp.load_rows(str(tmp_path), "test")


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
