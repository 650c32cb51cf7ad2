"""Generator of ProsQA-style problems (Coconut paper, Hao et al. 2024, section 4.1).

Each problem is a small random DAG of "Every X is a Y." facts over invented concept words,
a person P with "P is a X." facts, and the query "Is P a A or B?": exactly one of A (the
target) and B (the negative target) is reachable from P, and reaching it takes a
multi-hop path. Steps walk that path one in-context lookup each: the first is P's own
membership fact, "P is a X0.", each next one is the fact out of the current concept,
"Every X(i-1) is a Xi.", the last one reaches the target, and the answer is
"P is a <target>.". A problem with d hops has d "Every" facts on its path and d + 1 steps.

Graph per problem (all concepts distinct, drawn from the vocabulary):

    P -> c0 -> c1 -> ... -> c_d = target          the path (d hops, d + 1 steps)
    n0 -> n1 -> ... -> n_d' = neg_target          a disjoint chain of similar length
    P -> x0 -> ...                                a second membership of P into a dead end
                                                  (with probability `decoy`)
    c_i -> y (-> y')                              `branching` dead-end branches per path node
    n_j -> c_i  (0 < i < d)                       edges from the chain into the path (the
                                                  negative target stays unreachable from P)

The facts are listed in random order. Rows carry the graph fields of the original ProsQA
files: idx_to_symbol (index 0 is the person), edges [[u, v]], root (0), target, neg_target.
Everything is deterministic in the seed.

Sizes: the embedded default (configs/prosqa_coconut.py) uses 16 concepts, 1-3 hops,
branching 0, decoy 0 and 4,000 training rows; the CLI defaults (24 concepts, 3-4 hops,
branching 1, decoy 1) are harder, and --concepts 40 --min-hops 3 --max-hops 6 is the
paper-like range.

    python -m latent_jax.data.prosqa --out data/prosqa --train 4000 --valid 300 --test 300

Graph tokens (latent_jax.data.prosqa_graph, the format of the embedded default): generate
problems with ProsQA's statistics, or convert the real ProsQA files of the Coconut repo:

    python -m latent_jax.data.prosqa graph --out data/graph --train 12000 --valid 300 --test 500
    python -m latent_jax.data.prosqa convert --in prosqa_test.json --out data/prosqa_graph
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np

from latent_jax.data import prosqa_graph as G
from latent_jax.data.coconut_json import DataError, save_coconut_json

# Invented concept words in the style of ProntoQA / ProsQA.
CONCEPT_WORDS = (
    "wumpus yumpus zumpus dumpus rempus brimpus gorpus shumpus lempus sterpus grimpus lorpus "
    "vumpus jompus tumpus numpus impus kerpus fompus gerpus terpus yimpus bompus felpus "
    "hilpus scrompus twimpus quimpus rorpus zhorpus chumpus slimpus plorpus drimpus "
    "kelpus vorpus sarpus blimpus crumpus frimpus"
).split()
PERSON_NAMES = ("Alex", "Bob", "Davis", "Fae", "Gary", "Jack", "Max", "Polly", "Rex", "Sally", "Sam", "Stella", "Tom", "Wren")
_ONSETS = ("b", "br", "ch", "d", "dr", "f", "g", "gr", "h", "j", "k", "l", "m", "n", "p", "pl", "r", "s", "sh", "t", "tw", "v", "w", "y", "z")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("mpus", "rpus", "lpus")


# How a fact "a -> b" is written. "sentences" is ProsQA's ("Every X is a Y.", "P is a X.");
# "pairs" writes the subject right before the object ("X Y.", "P X."), so that finding a
# concept's fact is the plain previous-token lookup (an induction head) a small model trained
# from scratch forms in a few hundred updates (docs/coconut.md, "Embedded default result").
PHRASINGS = ("sentences", "pairs")


def _fact_renderer(phrasing: str):
    if phrasing == "sentences":
        return lambda a, b, person: f"{a} is a {b}." if person else f"Every {a} is a {b}."
    if phrasing == "pairs":
        return lambda a, b, person: f"{a} {b}."
    raise ValueError(f"phrasing={phrasing!r}; use one of {', '.join(PHRASINGS)}")


def concept_vocabulary(n: int) -> list[str]:
    """`n` distinct invented concept words (the built-in list, then generated ones)."""
    words = list(CONCEPT_WORDS[:n])
    seen = set(words)
    for o in _ONSETS:
        for v in _VOWELS:
            for c in _CODAS:
                if len(words) >= n:
                    return words
                w = o + v + c
                if w not in seen:
                    seen.add(w)
                    words.append(w)
    if len(words) < n:
        raise ValueError(f"concepts={n} is more than the {len(words)} invented words available; use fewer concepts")
    return words


def concepts_needed(max_hops: int, branching: int) -> int:
    """Distinct concepts one problem may use with these settings."""
    path = max_hops + 1
    neg = max_hops + 2
    return path + neg + 2 + 2 * branching * max_hops


def generate_problem(
    rng: np.random.Generator,
    concepts: list[str],
    persons: tuple[str, ...] = PERSON_NAMES,
    min_hops: int = 3,
    max_hops: int = 4,
    branching: int = 1,
    decoy: float = 1.0,
    phrasing: str = "sentences",
) -> dict[str, Any]:
    """One ProsQA-style row (question, steps, answer and graph fields). `decoy` is the
    probability that P has the second, dead-end membership (which makes the first step a
    choice that needs looking ahead); `phrasing` is how facts and steps are written (see
    PHRASINGS)."""
    fact = _fact_renderer(phrasing)
    d = int(rng.integers(min_hops, max_hops + 1))
    d_neg = int(rng.integers(max(1, d - 1), d + 2))
    person = persons[int(rng.integers(len(persons)))]
    order = rng.permutation(len(concepts))
    pool = [concepts[i] for i in order]
    take = iter(pool)

    def fresh() -> str:
        try:
            return next(take)
        except StopIteration:
            raise ValueError("ran out of concept words; raise --concepts or lower --max-hops / --branching") from None

    path = [fresh() for _ in range(d + 1)]
    neg = [fresh() for _ in range(d_neg + 1)]
    edges: list[tuple[str, str]] = [(person, path[0])]
    edges += [(path[i], path[i + 1]) for i in range(d)]
    edges += [(neg[j], neg[j + 1]) for j in range(d_neg)]
    # P's second membership: a dead-end chain
    has_decoy = rng.random() < decoy
    if has_decoy:
        x0 = fresh()
        edges.append((person, x0))
        if rng.random() < 0.5:
            edges.append((x0, fresh()))
    # dead-end branches off the path (never back into the path or the negative chain)
    for i in range(d):
        for _ in range(branching):
            y = fresh()
            edges.append((path[i], y))
            if rng.random() < 0.3:
                edges.append((y, fresh()))
    # edges from the negative chain into the path: neg_target stays unreachable from P,
    # and the path's concepts also appear in distractor facts
    # (into inner path nodes only, so both candidates have exactly one incoming fact)
    for j in range(d_neg):
        if d >= 2 and rng.random() < 0.5:
            edges.append((neg[j], path[int(rng.integers(1, d))]))

    names = sorted({s for e in edges for s in e} - {person})
    symbols = [person] + [names[i] for i in rng.permutation(len(names))]
    index = {s: i for i, s in enumerate(symbols)}
    facts = [fact(a, b, a == person) for a, b in edges]
    facts = [facts[i] for i in rng.permutation(len(facts))]
    target, neg_target = path[-1], neg[-1]
    a, b = (target, neg_target) if rng.random() < 0.5 else (neg_target, target)
    question = " ".join(facts) + f" Is {person} a {a} or {b}?"
    # one lookup per step: P's membership, then the fact out of the current concept
    steps = [fact(person, path[0], True)] + [fact(a, b, False) for a, b in zip(path, path[1:])]
    if phrasing == "pairs":
        # a leading space: after the "\n" that joins the steps, a step's first word is then the
        # same word-level token (" X", with its space) as in the question
        steps = [" " + s for s in steps]
    return {
        "question": question,
        "steps": steps,
        "answer": f"{person} is a {target}.",
        "idx_to_symbol": symbols,
        "edges": [[index[a], index[b]] for a, b in edges],
        "root": 0,
        "target": index[target],
        "neg_target": index[neg_target],
    }


def reachable(edges: list[list[int]], root: int) -> set[int]:
    """Nodes reachable from `root` (root included)."""
    adj: dict[int, list[int]] = {}
    for u, v in edges:
        adj.setdefault(u, []).append(v)
    seen, stack = {root}, [root]
    while stack:
        for v in adj.get(stack.pop(), []):
            if v not in seen:
                seen.add(v)
                stack.append(v)
    return seen


def generate_splits(
    sizes: dict[str, int],
    seed: int = 0,
    concepts: int = 24,
    min_hops: int = 3,
    max_hops: int = 4,
    branching: int = 1,
    persons: tuple[str, ...] = PERSON_NAMES,
    decoy: float = 1.0,
    phrasing: str = "sentences",
) -> dict[str, list[dict[str, Any]]]:
    """Rows per split ({"train": n, ...}), no question repeated across or within splits."""
    if not 1 <= min_hops <= max_hops:
        raise ValueError(f"hops range [{min_hops}, {max_hops}] is empty; use 1 <= min_hops <= max_hops")
    if branching < 0:
        raise ValueError(f"branching={branching}; use >= 0")
    if not 0.0 <= decoy <= 1.0:
        raise ValueError(f"decoy={decoy}; use a probability in [0, 1]")
    _fact_renderer(phrasing)
    need = concepts_needed(max_hops, branching)
    if concepts < need:
        raise ValueError(
            f"concepts={concepts} is too few for max_hops={max_hops}, branching={branching}; use --concepts {need} or more"
        )
    words = concept_vocabulary(concepts)
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    for name, n in sizes.items():
        rows: list[dict[str, Any]] = []
        tries = 0
        while len(rows) < n:
            tries += 1
            if tries > 20 * n + 1000:
                raise ValueError(f"could not make {n} distinct {name} problems; raise --concepts or the hop range")
            row = generate_problem(rng, words, persons, min_hops, max_hops, branching, decoy, phrasing)
            if row["question"] in seen:
                continue
            seen.add(row["question"])
            rows.append(row)
        out[name] = rows
    return out


def write_prosqa(
    out_dir: str,
    train: int = 4000,
    valid: int = 300,
    test: int = 300,
    seed: int = 0,
    concepts: int = 24,
    min_hops: int = 3,
    max_hops: int = 4,
    branching: int = 1,
    prefix: str = "prosqa",
    decoy: float = 1.0,
    phrasing: str = "sentences",
) -> dict[str, str]:
    """Writes {prefix}_train/valid/test.json (Coconut format) under out_dir; returns the paths."""
    splits = generate_splits(
        {"train": train, "valid": valid, "test": test}, seed, concepts, min_hops, max_hops, branching, decoy=decoy,
        phrasing=phrasing,
    )
    paths = {}
    for name, rows in splits.items():
        if not rows:
            continue
        p = os.path.join(out_dir, f"{prefix}_{name}.json")
        save_coconut_json(rows, p)
        paths[name] = p
    return paths


def graph_main(argv: list[str]) -> int:
    """`graph`: generated graph-token splits; `convert`: real ProsQA files -> graph tokens."""
    cmd, argv = argv[0], argv[1:]
    ap = argparse.ArgumentParser(prog=f"python -m latent_jax.data.prosqa {cmd}")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--node-tokens", type=int, default=32, help="node ids per problem are drawn from 0 .. N-1")
    ap.add_argument("--seed", type=int, default=0)
    if cmd == "convert":
        ap.description = "Convert ProsQA JSON files (question, steps, answer, idx_to_symbol, edges, root, target, neg_target) to graph tokens."
        ap.add_argument("--in", dest="inputs", nargs="+", required=True, help="ProsQA JSON file(s)")
        ap.add_argument("--on-bad-row", default="error", choices=("error", "skip"))
    else:
        ap.description = "Write generated graph-token ProsQA problems (train/valid/test)."
        ap.add_argument("--train", type=int, default=14785)
        ap.add_argument("--valid", type=int, default=257)
        ap.add_argument("--test", type=int, default=419)
        ap.add_argument("--min-nodes", type=int, default=20)
        ap.add_argument("--max-nodes", type=int, default=26)
        ap.add_argument("--edges-per-node", type=float, default=1.57)
        ap.add_argument("--min-hops", type=int, default=3)
        ap.add_argument("--max-hops", type=int, default=4)
        ap.add_argument("--decoy", type=float, default=1.0, help="probability of the decoy branch from the root")
    a = ap.parse_args(argv)
    try:
        if cmd == "convert":
            for i, src in enumerate(a.inputs):
                path, n, skipped = G.convert_file(src, a.out, node_tokens=a.node_tokens, seed=a.seed + i,
                                                  on_bad_row=a.on_bad_row)
                print(f"{src} -> {path}: {n} rows" + (f", {len(skipped)} skipped" if skipped else ""))
        else:
            paths = G.write_graph_splits(
                a.out, {"train": a.train, "valid": a.valid, "test": a.test}, seed=a.seed, min_nodes=a.min_nodes,
                max_nodes=a.max_nodes, edges_per_node=a.edges_per_node, min_hops=a.min_hops, max_hops=a.max_hops,
                node_tokens=a.node_tokens, decoy=a.decoy)
            for name, p in paths.items():
                print(f"{name}: {p}")
    except (ValueError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("convert", "graph"):
        return graph_main(argv)
    ap = argparse.ArgumentParser(
        prog="python -m latent_jax.data.prosqa",
        description="Write ProsQA-style train/valid/test files in the Coconut JSON format.",
    )
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--valid", type=int, default=300)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concepts", type=int, default=24, help="invented concept words in the vocabulary")
    ap.add_argument("--min-hops", type=int, default=3, help="fewest reasoning steps")
    ap.add_argument("--max-hops", type=int, default=4, help="most reasoning steps")
    ap.add_argument("--branching", type=int, default=1, help="dead-end branches per path concept")
    ap.add_argument("--decoy", type=float, default=1.0,
                    help="probability that the person has a second, dead-end membership")
    ap.add_argument("--phrasing", default="sentences", choices=PHRASINGS,
                    help="sentences: 'Every X is a Y.' (ProsQA); pairs: 'X Y.'")
    ap.add_argument("--prefix", default="prosqa")
    a = ap.parse_args(argv)
    try:
        paths = write_prosqa(
            a.out, a.train, a.valid, a.test, a.seed, a.concepts, a.min_hops, a.max_hops, a.branching, a.prefix, a.decoy,
            a.phrasing,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, p in paths.items():
        print(f"{name}: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
