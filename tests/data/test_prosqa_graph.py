"""Graph-token ProsQA: frontier labels on hand-built graphs, the generator's invariants and
statistics, and the converter on hand-written rows in the ProsQA schema."""

import json

import numpy as np
import pytest

from latent_jax.data import prosqa, prosqa_graph as G
from latent_jax.data.coconut_json import DataError, load_coconut_json

# root 0 -> {1, 2}; 1 -> 3, 2 -> 3, 2 -> 4; 3 -> 5 (target), 4 -> 6; 7 -> 8 (negative), 7 -> 4
HAND = [[0, 1], [0, 2], [1, 3], [2, 3], [2, 4], [3, 5], [4, 6], [7, 8], [7, 4]]


def test_frontier_and_reach_on_a_hand_built_graph():
    frontier, reach = G.frontiers(HAND, 0, 5)
    assert reach == [[1, 2], [3, 4], [5, 6]]
    assert frontier == [[1, 2], [3], [5]]  # 4 and 6 are reachable but off every shortest path
    assert G.shortest_path(HAND, 0, 5) == [1, 3, 5]
    assert G.distances(HAND, 0).get(8) is None
    with pytest.raises(ValueError, match="not reachable"):
        G.frontiers(HAND, 0, 8)


def test_frontier_keeps_only_shortest_paths():
    # a longer way round (0 -> 9 -> 10 -> 11 -> 5) does not put its nodes on the frontier
    edges = HAND + [[0, 9], [9, 10], [10, 11], [11, 5]]
    frontier, reach = G.frontiers(edges, 0, 5)
    assert frontier == [[1, 2], [3], [5]] and reach[0] == [1, 2, 9]


@pytest.mark.parametrize("hops", [2, 3, 4])
def test_generated_graphs_keep_the_invariants(hops):
    rng = np.random.default_rng(hops)
    for _ in range(200):
        g = G.generate_graph(rng, num_nodes=20, num_edges=31, hops=hops)
        e, r, t, n = g["edges"], g["root"], g["target"], g["neg_target"]
        dist = G.distances(e, r)
        assert dist[t] == hops and n not in dist
        assert not any(u in (t, n) for u, _ in e)  # both candidates are leaves
        assert len({x for ed in e for x in ed}) == 20  # every node is on some edge
        kids = {v for u, v in e if u == r}
        on_path = set(G.frontiers(e, r, t)[0][0])
        assert kids - on_path  # the decoy: a first hop that does not lead to the target
        # the decoy ends next to the wrong candidate: a node at the target's depth shares a parent with it
        parents_n = {u for u, v in e if v == n}
        assert any(dist.get(v) == hops and v != t for u, v in e if u in parents_n)


def test_rows_match_prosqa_statistics_and_renumber_nodes():
    rng = np.random.default_rng(0)
    rows = G.generate_rows(600, rng)
    st = G.statistics(rows)
    # the superposition paper's ProsQA graph files: 22.7 nodes, 36.0 edges, 3-4 hops
    assert 21.5 < st["nodes"] < 24.5 and 33 < st["edges"] < 39 and 3.2 < st["hops"] < 3.8
    ids_used = {v for r in rows for e in r["edges"] for v in e}
    assert ids_used == set(range(32))  # drawn from the whole node vocabulary, in no fixed order
    roots = [r["root"] for r in rows]
    assert len(set(roots)) > 20
    for r in rows[:50]:
        toks = r["question"].split()  # "... [Q] a b [R] root"
        assert toks[-5] == G.Q and toks[-2] == G.R and int(toks[-1]) == r["root"]
        assert {int(toks[-4]), int(toks[-3])} == {r["target"], r["neg_target"]}
        pairs = " ".join(toks[:-5]).split(f" {G.SEP} ")
        assert sorted(tuple(map(int, p.split())) for p in pairs) == sorted(map(tuple, r["edges"]))
        path = [int(s) for s in r["steps"]]
        assert path[-1] == r["target"] == int(r["answer"])
        assert all([u, v] in r["edges"] for u, v in zip([r["root"]] + path, path))
        assert [[str(v) for v in f] for f in G.frontiers(r["edges"], r["root"], r["target"])[0]] == r["frontier"]


def test_generation_is_deterministic_and_splits_are_disjoint(tmp_path):
    kw = dict(min_nodes=12, max_nodes=14, min_hops=3, max_hops=3, node_tokens=16)
    a = G.write_graph_splits(str(tmp_path / "a"), {"train": 60, "test": 20}, seed=3, **kw)
    b = G.write_graph_splits(str(tmp_path / "b"), {"train": 60, "test": 20}, seed=3, **kw)
    ra, rb = (json.load(open(a["train"])), json.load(open(b["train"])))
    assert ra == rb
    test_q = {r["question"] for r in json.load(open(a["test"]))}
    assert not test_q & {r["question"] for r in ra}


# two rows written by hand in the schema of the Coconut repo's ProsQA files
PROSQA_ROWS = [
    {
        "question": "Every wumpus is a yumpus. Tom is a wumpus. Every yumpus is a zumpus. Tom is a rempus. "
                    "Every gorpus is a brimpus. Is Tom a zumpus or brimpus?",
        "steps": ["Tom is a wumpus.", "Every wumpus is a yumpus.", "Every yumpus is a zumpus."],
        "answer": "Tom is a zumpus.",
        "idx_to_symbol": ["Tom", "wumpus", "yumpus", "zumpus", "rempus", "gorpus", "brimpus"],
        "edges": [[1, 2], [0, 1], [2, 3], [0, 4], [5, 6]],
        "root": 0, "target": 3, "neg_target": 6,
    },
    {
        "question": "Sally is a lempus. Every lempus is a terpus. Every jompus is a tumpus. Is Sally a terpus or tumpus?",
        "steps": ["Sally is a lempus.", "Every lempus is a terpus."],
        "answer": "Sally is a terpus.",
        "idx_to_symbol": ["Sally", "lempus", "terpus", "jompus", "tumpus"],
        "edges": [[0, 1], [1, 2], [3, 4]],
        "root": 0, "target": 2, "neg_target": 4,
    },
]


def test_converter_on_hand_written_prosqa_rows(tmp_path):
    src = tmp_path / "prosqa_test.json"
    src.write_text(json.dumps(PROSQA_ROWS))
    path, n, skipped = G.convert_file(str(src), str(tmp_path / "out"), node_tokens=10, seed=1)
    assert n == 2 and not skipped and path.endswith("prosqa_test.json")
    rows = [e.to_json() for e in load_coconut_json(path)]
    for orig, row in zip(PROSQA_ROWS, rows):
        sym = row["idx_to_symbol"]
        # same graph under the renumbering: edges, root, candidates by name
        assert sorted((sym[u], sym[v]) for u, v in row["edges"]) == sorted(
            (orig["idx_to_symbol"][u], orig["idx_to_symbol"][v]) for u, v in orig["edges"])
        assert sym[row["root"]] == orig["idx_to_symbol"][orig["root"]]
        assert sym[row["target"]] == orig["idx_to_symbol"][orig["target"]] and row["answer"] == str(row["target"])
        # the steps name the path of the original steps, one node each
        want = [s.rstrip(".").split()[-1] for s in orig["steps"]]
        assert [sym[int(s)] for s in row["steps"]] == want
        assert len(row["frontier"]) == len(orig["steps"])
    sym = rows[0]["idx_to_symbol"]
    assert [sym[int(v)] for v in rows[0]["frontier"][0]] == ["wumpus"]  # rempus is reachable, a dead end
    assert sorted(sym[int(v)] for v in rows[0]["reach"][0]) == ["rempus", "wumpus"]


def test_converter_rejects_a_bad_row_by_index_and_can_skip_it(tmp_path):
    bad = dict(PROSQA_ROWS[1], edges=[[0, 1], [1, 9]])
    src = tmp_path / "p.json"
    src.write_text(json.dumps([PROSQA_ROWS[0], bad]))
    with pytest.raises(DataError, match=r"row 1: edge \[1, 9\].*--on-bad-row skip"):
        G.convert_file(str(src), str(tmp_path / "o1"))
    assert not (tmp_path / "o1").exists()  # nothing written
    path, n, skipped = G.convert_file(str(src), str(tmp_path / "o2"), on_bad_row="skip")
    assert n == 1 and len(skipped) == 1 and "row 1" in skipped[0]
    reach_neg = dict(PROSQA_ROWS[1], edges=[[0, 1], [1, 2], [1, 4]])
    src.write_text(json.dumps([reach_neg]))
    with pytest.raises(DataError, match="neg_target is reachable"):
        G.convert_file(str(src), str(tmp_path / "o3"))


def test_convert_cli(tmp_path, capsys):
    src = tmp_path / "prosqa_valid.json"
    src.write_text(json.dumps(PROSQA_ROWS))
    assert prosqa.main(["convert", "--in", str(src), "--out", str(tmp_path / "g"), "--node-tokens", "12"]) == 0
    assert "2 rows" in capsys.readouterr().out
    assert len(load_coconut_json(str(tmp_path / "g" / "prosqa_valid.json"))) == 2
    assert prosqa.main(["convert", "--in", str(src), "--out", str(tmp_path / "g"), "--node-tokens", "4"]) == 2
    assert "raise node_tokens" in capsys.readouterr().err
    assert prosqa.main(["convert", "--in", str(src), "--out", str(tmp_path)]) == 2  # would overwrite its input
    assert "overwrite" in capsys.readouterr().err
