import json

import pytest

from latent_jax.data.coconut_json import DataError, load_coconut_json, save_coconut_json

GOOD = {"question": "Is Tom a a or b?", "steps": ["Tom is a c.", "Tom is a a."], "answer": "Tom is a a."}


def _write(tmp_path, rows, name="d.json"):
    p = tmp_path / name
    p.write_text(json.dumps(rows, indent=1))
    return p


def test_roundtrip_with_graph_fields(tmp_path):
    row = dict(GOOD, idx_to_symbol=["Tom", "a", "b", "c"], edges=[[0, 3], [3, 1]], root=0, target=1, neg_target=2)
    p = _write(tmp_path, [row, GOOD])
    exs = load_coconut_json(p)
    assert [e.idx for e in exs] == [0, 1]
    assert exs[0].steps == ("Tom is a c.", "Tom is a a.") and exs[0].extra["target"] == 1
    save_coconut_json(exs, tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text()) == [row, GOOD]


@pytest.mark.parametrize(
    "bad, why",
    [
        ([1, 2], "not an object"),
        ({"question": "q", "steps": []}, "missing field 'answer'"),
        ({"question": "q", "steps": "s", "answer": "a"}, "list of strings"),
        ({"question": "q", "steps": [], "answer": 3}, "'answer' must be a string"),
        (dict(GOOD, edges=[[0]]), "edges"),
    ],
)
def test_bad_row_reported_by_file_row_and_line(tmp_path, bad, why):
    p = _write(tmp_path, [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DataError) as e:
        load_coconut_json(p)
    msg = str(e.value)
    assert str(p) in msg and "row 2" in msg and why in msg and "line " in msg and "on_bad_row='skip'" in msg
    exs, rep = load_coconut_json(p, on_bad_row="skip", return_report=True)
    assert [x.idx for x in exs] == [0, 1, 3]
    assert rep.total == 4 and rep.kept == 3 and rep.num_skipped == 1 and "row 2" in rep.skipped[0]


def test_line_numbers_point_at_the_row(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('[\n' + json.dumps(GOOD) + ',\n\n' + json.dumps({"question": "q"}) + '\n]\n')
    with pytest.raises(DataError, match=r"row 1 \(line 4\)"):
        load_coconut_json(p)


def test_zero_rows_and_broken_files_are_errors(tmp_path):
    with pytest.raises(DataError, match="no usable rows"):
        load_coconut_json(_write(tmp_path, []))
    with pytest.raises(DataError, match="no usable rows.*1 corrupt"):
        load_coconut_json(_write(tmp_path, [{"x": 1}], "b.json"), on_bad_row="skip")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"question": "q", "steps": [], "answer": "a"},\n {"question": ')
    with pytest.raises(DataError, match=r"broken.json: invalid JSON at line 2"):
        load_coconut_json(broken)
    with pytest.raises(DataError, match="no such data file"):
        load_coconut_json(tmp_path / "missing.json")


def test_jsonl_and_max_rows(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(GOOD) for _ in range(5)) + "\n")
    assert len(load_coconut_json(p)) == 5
    assert len(load_coconut_json(p, max_rows=2)) == 2
