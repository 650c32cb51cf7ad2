import re

import pytest

from latent_jax.data import prosqa
from latent_jax.data.coconut_json import load_coconut_json


@pytest.fixture(scope="module")
def splits():
    return prosqa.generate_splits({"train": 300, "valid": 40, "test": 40}, seed=5, concepts=26, min_hops=3, max_hops=5)


def test_deterministic_in_seed(splits):
    again = prosqa.generate_splits({"train": 300, "valid": 40, "test": 40}, seed=5, concepts=26, min_hops=3, max_hops=5)
    assert again == splits
    other = prosqa.generate_splits({"train": 300, "valid": 40, "test": 40}, seed=6, concepts=26, min_hops=3, max_hops=5)
    assert other["train"] != splits["train"]


def test_problems_are_multi_hop_and_consistent(splits):
    words = set(prosqa.concept_vocabulary(26))
    qs = [r["question"] for rows in splits.values() for r in rows]
    assert len(set(qs)) == len(qs)  # no repeats within or across splits
    first_a = 0
    for r in splits["train"]:
        sym, edges = r["idx_to_symbol"], r["edges"]
        person = sym[r["root"]]
        target, neg = sym[r["target"]], sym[r["neg_target"]]
        assert r["root"] == 0 and set(sym[1:]) <= words
        reach = prosqa.reachable(edges, r["root"])
        assert r["target"] in reach and r["neg_target"] not in reach
        # the question states exactly the graph's facts, then the query
        facts = re.findall(r"[^.?]+[.?]", r["question"])
        query = facts.pop().strip()
        m = re.fullmatch(rf"Is {person} a (\w+) or (\w+)\?", query)
        assert m and {m.group(1), m.group(2)} == {target, neg}
        first_a += m.group(1) == target
        want = {f"{sym[u]} is a {sym[v]}." if u == 0 else f"Every {sym[u]} is a {sym[v]}." for u, v in edges}
        assert {f.strip() for f in facts} == want and len(facts) == len(edges)
        # steps walk the graph one lookup each: P's membership, then the fact out of the
        # current concept, ending at the target (d hops = d "Every" facts, d + 1 steps)
        assert 4 <= len(r["steps"]) <= 6
        idx = {s: i for i, s in enumerate(sym)}
        first = re.fullmatch(rf"{person} is a (\w+)\.", r["steps"][0]).group(1)
        assert [0, idx[first]] in edges
        cur = first
        for s in r["steps"][1:]:
            a, b = re.fullmatch(r"Every (\w+) is a (\w+)\.", s).groups()
            assert a == cur and [idx[a], idx[b]] in edges and s in r["question"]
            cur = b
        assert cur == target and r["answer"] == f"{person} is a {target}."
        # no in-degree shortcut: each candidate is the object of exactly one fact
        assert sum(v == r["target"] for _, v in edges) == 1 == sum(v == r["neg_target"] for _, v in edges)
    assert 0.35 < first_a / len(splits["train"]) < 0.65


def test_cli_writes_coconut_files(tmp_path, capsys):
    assert prosqa.main(["--out", str(tmp_path), "--train", "30", "--valid", "5", "--test", "5", "--seed", "2"]) == 0
    for name, n in (("train", 30), ("valid", 5), ("test", 5)):
        exs = load_coconut_json(tmp_path / f"prosqa_{name}.json")
        assert len(exs) == n and {"edges", "root", "target", "neg_target", "idx_to_symbol"} <= set(exs[0].extra)
    assert "train:" in capsys.readouterr().out
    assert prosqa.main(["--out", str(tmp_path), "--concepts", "10"]) == 2
    assert "use --concepts" in capsys.readouterr().err
    with pytest.raises(ValueError, match="hops range"):
        prosqa.generate_splits({"train": 1}, min_hops=4, max_hops=3)


def test_decoy_probability():
    def person_facts(rows):
        return [sum(u == 0 for u, _ in r["edges"]) for r in rows]

    none = prosqa.generate_splits({"train": 60}, seed=1, min_hops=2, max_hops=3, branching=0, decoy=0.0)["train"]
    assert person_facts(none) == [1] * 60  # the person's only membership starts the path
    for r in none:
        assert prosqa.reachable(r["edges"], 0) >= {r["target"]} and r["neg_target"] not in prosqa.reachable(r["edges"], 0)
    full = prosqa.generate_splits({"train": 60}, seed=1, min_hops=2, max_hops=3, branching=0)["train"]
    assert person_facts(full) == [2] * 60
    with pytest.raises(ValueError, match="decoy"):
        prosqa.generate_splits({"train": 1}, decoy=1.5)


def test_pairs_phrasing_keeps_one_token_per_concept(tmp_path):
    """'pairs' writes "X Y." facts; with the word-level tokenizer every concept (and the
    person) has the same id in the question and in the steps, each fact's subject token
    comes right before its object token, and the graph is the same as with sentences."""
    from latent_jax.data import tokenizer as T
    from latent_jax.data.coconut_json import CoconutExample

    kw = dict(seed=3, concepts=16, min_hops=1, max_hops=3, branching=0, decoy=0.0)
    pairs = prosqa.generate_splits({"train": 80}, phrasing="pairs", **kw)["train"]
    sents = prosqa.generate_splits({"train": 80}, **kw)["train"]
    assert [r["edges"] for r in pairs] == [r["edges"] for r in sents]
    r = pairs[0]
    sym = r["idx_to_symbol"]
    assert f" {sym[0]} {sym[r['edges'][0][1]]}." in " " + r["question"] and "Every" not in r["question"]
    assert r["answer"] == f"{sym[0]} is a {sym[r['target']]}."
    exs = [CoconutExample(x["question"], tuple(x["steps"]), x["answer"]) for x in pairs]
    tok = T.train_tokenizer(T.text_corpus(exs), str(tmp_path), kind="word")
    for x in pairs[:20]:
        q_ids = set(tok.encode(" " + x["question"]))
        for step in x["steps"]:
            a, b = step.strip().rstrip(".").split()
            ids = tok.encode("\n" + step)
            assert ids[1:3] == tok.encode(f" {a} {b}")  # the step's words are the question's tokens
            assert set(ids[1:3]) <= q_ids
    with pytest.raises(ValueError, match="use one of sentences, pairs"):
        prosqa.generate_splits({"train": 1}, phrasing="arrows")
