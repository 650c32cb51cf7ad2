"""ProsQA as graph tokens: the problem format of "Reasoning by Superposition" (Zhu, Hao et al.,
NeurIPS 2025, arXiv 2505.12514), a generator with ProsQA's statistics, and a converter from
the real ProsQA files.

A problem is a DAG with a root, a target reachable from it and a negative target that is
not. Written as tokens, one token per node (node ids renumbered at random within each
problem, out of a vocabulary of `node_tokens` ids, so ids carry no order):

    question   "3 5 | 1 4 | ... | 9 2 [Q] 7 9 [R] 1"   edges as pairs, the two candidates
                                                      (random order), the root
    steps      ["5", "8", "7"]                        one shortest path, root excluded
    answer     "7"                                    the target (written after "[A]")

and the row keeps the graph fields of the ProsQA files (`idx_to_symbol`, `edges`, `root`,
`target`, `neg_target`, in the new ids) plus, per depth k = 1 .. hops:

    frontier   nodes at distance k on a shortest path to the target (the labels of
               frontier supervision: after k - 1 thoughts the model names one of them)
    reach      every node at distance k from the root (the BFS frontier a thought is
               probed against)

Generator (`generate_graph`): a layered DAG. Every edge reachable from the root goes from
level l to level l + 1, so the distance of a node from the root is its level and the
target sits at exactly `hops`. Nodes are on the root's side or on the negative target's
side (its ancestors); edges go root-side -> root-side, negative-side -> negative-side and
negative-side -> root-side, never root-side -> negative-side, so the negative target stays
unreachable. A decoy branch leaves the root beside the path, runs as deep as the target and
ends in a node that is also a child of the negative target's parent: a single path that
takes it arrives next to the wrong candidate, so the first hop is a choice that needs
looking ahead. The remaining nodes and edges are spread at random over both sides.
Defaults match ProsQA as used by the superposition paper (about 23 nodes, 36 edges, 3-4
hops; measured on its published graph files).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Sequence

import numpy as np

from latent_jax.data.coconut_json import DataError, load_coconut_json, save_coconut_json

Q, R, A, SEP = "[Q]", "[R]", "[A]", "|"
GRAPH_FIELDS = ("idx_to_symbol", "edges", "root", "target", "neg_target")


# ----------------------------------------------------------------------------- graph algorithms
def distances(edges: Sequence[Sequence[int]], src: int, reverse: bool = False) -> dict[int, int]:
    """BFS distance of every node reachable from `src` (along the edges, or against them)."""
    adj: dict[int, list[int]] = {}
    for u, v in edges:
        a, b = (v, u) if reverse else (u, v)
        adj.setdefault(int(a), []).append(int(b))
    dist, q = {int(src): 0}, deque([int(src)])
    while q:
        u = q.popleft()
        for v in adj.get(u, []):
            if v not in dist:
                dist[v] = dist[u] + 1
                q.append(v)
    return dist


def frontiers(edges: Sequence[Sequence[int]], root: int, target: int) -> tuple[list[list[int]], list[list[int]]]:
    """(frontier, reach), each a list over depth k = 1 .. d (d = distance root -> target):
    frontier[k-1] = nodes at distance k on a shortest path to the target, reach[k-1] = all
    nodes at distance k from the root. Raises ValueError when the target is unreachable."""
    down = distances(edges, root)
    if target not in down:
        raise ValueError(f"target {target} is not reachable from root {root}")
    up = distances(edges, target, reverse=True)
    d = down[target]
    frontier = [sorted(v for v, k in down.items() if k == i and up.get(v) == d - i) for i in range(1, d + 1)]
    reach = [sorted(v for v, k in down.items() if k == i) for i in range(1, d + 1)]
    return frontier, reach


def shortest_path(edges: Sequence[Sequence[int]], root: int, target: int,
                  frontier: list[list[int]] | None = None) -> list[int]:
    """One shortest path root -> target (root excluded; the smallest id at each choice);
    `frontier` from `frontiers` when the caller has it."""
    if frontier is None:
        frontier, _ = frontiers(edges, root, target)
    adj: dict[int, set[int]] = {}
    for u, v in edges:
        adj.setdefault(int(u), set()).add(int(v))
    path, cur = [], int(root)
    for layer in frontier:
        cur = min(v for v in layer if v in adj.get(cur, ()))
        path.append(cur)
    return path


# ----------------------------------------------------------------------------- generator
def generate_graph(
    rng: np.random.Generator,
    num_nodes: int = 23,
    num_edges: int = 36,
    hops: int = 3,
    decoy: bool = True,
) -> dict[str, Any]:
    """One random problem graph: {"num_nodes", "edges", "root", "target", "neg_target"} with
    nodes 0 .. num_nodes - 1 (see the module docstring). The target is at distance exactly
    `hops`; the negative target is unreachable from the root."""
    d = int(hops)
    fixed = 1 + d + (d if decoy else 0)  # root, path, decoy branch
    room = num_nodes - fixed - 1  # longest negative chain that fits (d_neg + 1 nodes)
    if room < 1:
        raise ValueError(f"num_nodes={num_nodes} is too few for hops={d}; use {fixed + 2} or more")
    d_neg = int(rng.integers(max(1, min(d - 1, room)), min(d + 1, room) + 1))
    level: list[int] = []
    side: list[str] = []  # "p": may be reached from the root, "n": ancestors of the negative target

    def node(lv: int, sd: str) -> int:
        level.append(lv)
        side.append(sd)
        return len(level) - 1

    edges: set[tuple[int, int]] = set()
    root = node(0, "p")
    path = [root] + [node(i, "p") for i in range(1, d + 1)]
    edges |= {(path[i], path[i + 1]) for i in range(d)}
    # the negative chain sits at the same depths, ending at the target's level or one off
    off = d - d_neg + int(rng.integers(0, 2)) - 1
    neg = [node(off + j, "n") for j in range(d_neg + 1)]
    edges |= {(neg[j], neg[j + 1]) for j in range(d_neg)}
    if decoy:  # root -> y1 -> ... -> y_{d-1} -> z, and the negative target's parent -> z
        ys = [root] + [node(i, "p") for i in range(1, d)]
        z = node(d, "p")
        edges |= {(ys[i], ys[i + 1]) for i in range(d - 1)} | {(ys[-1], z), (neg[-2], z)}
    # filler nodes, spread over both sides and all depths
    while len(level) < num_nodes:
        if rng.random() < 0.6:
            node(int(rng.integers(1, d + 1)), "p")
        else:
            node(int(rng.integers(off, off + d_neg + 1)), "n")

    closed = {path[-1], neg[-1]}  # both candidates are leaves, as in ProsQA
    if decoy:
        closed |= set(ys[1:]) | {z}  # the decoy branch has no way out to the target

    def allowed(u: int, v: int) -> bool:
        if u == v or v == root or u in closed or (u, v) in edges:
            return False
        if side[u] == "p":  # root-side edges keep the layering (so distance = level)
            return side[v] == "p" and level[v] == level[u] + 1
        return side[v] == "p" or level[v] == level[u] + 1  # negative side: into anything root-side, or down a level

    # every filler node gets an edge (in from its level above when it can, else out)
    n_fixed = len(path) + len(neg) + (d if decoy else 0)
    for v in range(n_fixed, num_nodes):
        cands = [u for u in range(num_nodes) if allowed(u, v)]
        if cands:
            edges.add((int(rng.choice(cands)), v))
        else:
            outs = [w for w in range(num_nodes) if allowed(v, w)]
            if outs:
                edges.add((v, int(rng.choice(outs))))
    tries = 0
    while len(edges) < num_edges and tries < 50 * num_edges:
        tries += 1
        u, v = (int(x) for x in rng.integers(0, num_nodes, 2))
        if allowed(u, v):
            edges.add((u, v))
    g = {"num_nodes": num_nodes, "edges": sorted(edges), "root": root, "target": path[-1], "neg_target": neg[-1]}
    dist = distances(g["edges"], root)
    assert dist.get(path[-1]) == d and neg[-1] not in dist, "generator invariant"
    return g


# ----------------------------------------------------------------------------- graph -> tokens
def graph_row(
    rng: np.random.Generator,
    edges: Sequence[Sequence[int]],
    root: int,
    target: int,
    neg_target: int,
    num_nodes: int,
    node_tokens: int,
    symbols: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The graph-token Coconut row of a problem (module docstring): node ids renumbered
    by a random injection into 0 .. node_tokens - 1, edges and candidates shuffled."""
    if num_nodes > node_tokens:
        raise ValueError(f"a problem has {num_nodes} nodes but node_tokens={node_tokens}; raise node_tokens")
    new = [int(x) for x in rng.permutation(node_tokens)[:num_nodes]]
    e = [[new[int(u)], new[int(v)]] for u, v in edges]
    e = [e[i] for i in rng.permutation(len(e))]
    r, t, n = new[root], new[target], new[neg_target]
    a, b = (t, n) if rng.random() < 0.5 else (n, t)
    frontier, reach = frontiers(e, r, t)
    question = f" {SEP} ".join(f"{u} {v}" for u, v in e) + f" {Q} {a} {b} {R} {r}"
    inv = {new[i]: i for i in range(num_nodes)}
    sym = [str(i) for i in range(node_tokens)]
    if symbols is not None:  # keep the original names of the renumbered nodes
        sym = [symbols[inv[i]] if i in inv else "" for i in range(node_tokens)]
    return {
        "question": question,
        "steps": [str(v) for v in shortest_path(e, r, t, frontier)],
        "answer": str(t),
        "idx_to_symbol": sym,
        "edges": e,
        "root": r,
        "target": t,
        "neg_target": n,
        "frontier": [[str(v) for v in f] for f in frontier],
        "reach": [[str(v) for v in f] for f in reach],
    }


def generate_rows(
    n: int,
    rng: np.random.Generator,
    min_nodes: int = 20,
    max_nodes: int = 26,
    edges_per_node: float = 1.57,
    min_hops: int = 3,
    max_hops: int = 4,
    node_tokens: int = 32,
    decoy: float = 1.0,
    seen: set[str] | None = None,
) -> list[dict[str, Any]]:
    """`n` distinct graph-token rows (questions in `seen` are skipped; `seen` is updated)."""
    if not 1 <= min_hops <= max_hops:
        raise ValueError(f"hops range [{min_hops}, {max_hops}] is empty; use 1 <= min_hops <= max_hops")
    if not 1 <= min_nodes <= max_nodes <= node_tokens:
        raise ValueError(f"nodes range [{min_nodes}, {max_nodes}] must lie in [1, node_tokens={node_tokens}]")
    seen = set() if seen is None else seen
    rows: list[dict[str, Any]] = []
    tries = 0
    while len(rows) < n:
        tries += 1
        if tries > 20 * n + 1000:
            raise ValueError(f"could not make {n} distinct problems; widen the nodes or hops range")
        nn = int(rng.integers(min_nodes, max_nodes + 1))
        g = generate_graph(rng, nn, int(round(edges_per_node * nn)), int(rng.integers(min_hops, max_hops + 1)),
                           decoy=bool(rng.random() < decoy))
        row = graph_row(rng, g["edges"], g["root"], g["target"], g["neg_target"], nn, node_tokens)
        if row["question"] in seen:
            continue
        seen.add(row["question"])
        rows.append(row)
    return rows


def write_graph_splits(out_dir: str, sizes: dict[str, int], seed: int = 0, prefix: str = "prosqa_graph",
                       **gen: Any) -> dict[str, str]:
    """Writes {prefix}_{split}.json (Coconut JSON, graph-token rows) for each split; returns
    the paths. No question repeats within or across splits; deterministic in `seed`."""
    import os

    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    paths = {}
    for name, n in sizes.items():
        rows = generate_rows(int(n), rng, seen=seen, **gen)
        p = os.path.join(out_dir, f"{prefix}_{name}.json")
        save_coconut_json(rows, p)
        paths[name] = p
    return paths


# ----------------------------------------------------------------------------- converter
def convert_row(row: dict[str, Any], rng: np.random.Generator, node_tokens: int = 32) -> dict[str, Any]:
    """A ProsQA row (the Coconut repo's fields: question, steps, answer, idx_to_symbol, edges,
    root, target, neg_target) as a graph-token row. Raises ValueError naming the problem."""
    missing = [f for f in GRAPH_FIELDS if f not in row]
    if missing:
        raise ValueError(f"missing ProsQA graph field(s) {missing}")
    sym = row["idx_to_symbol"]
    nn = len(sym)
    for u, v in row["edges"]:
        if not (0 <= u < nn and 0 <= v < nn):
            raise ValueError(f"edge [{u}, {v}] names a node outside idx_to_symbol (size {nn})")
    for f in ("root", "target", "neg_target"):
        if not 0 <= row[f] < nn:
            raise ValueError(f"{f}={row[f]} is outside idx_to_symbol (size {nn})")
    if row["neg_target"] in distances(row["edges"], row["root"]):
        raise ValueError("neg_target is reachable from root; not a ProsQA problem")
    return graph_row(rng, row["edges"], row["root"], row["target"], row["neg_target"], nn, node_tokens, symbols=sym)


def convert_file(src: str, out_dir: str, node_tokens: int = 32, seed: int = 0,
                 on_bad_row: str = "error") -> tuple[str, int, list[str]]:
    """Converts a ProsQA JSON file into `out_dir/<name>` (same file name) in the graph-token
    format. Returns (path, rows written, messages of skipped rows). A bad row names its
    index; with on_bad_row='skip' it is skipped and counted, else the conversion stops and
    nothing is written."""
    import os

    path = os.path.join(out_dir, os.path.basename(src))
    if os.path.abspath(path) == os.path.abspath(src):
        raise DataError(f"{src}: converting into its own directory would overwrite the input; pass another --out")
    rows = load_coconut_json(src, on_bad_row=on_bad_row)
    rng = np.random.default_rng(seed)
    out, skipped = [], []
    for ex in rows:
        try:
            out.append(convert_row(ex.to_json(), rng, node_tokens))
        except (ValueError, TypeError) as e:
            msg = f"{src}: row {ex.idx}: {e}"
            if on_bad_row != "skip":
                raise DataError(msg + "; fix the row or convert with --on-bad-row skip") from None
            skipped.append(msg)
    if not out:
        raise DataError(f"{src}: no row could be converted (first problem: {skipped[0] if skipped else 'none'})")
    save_coconut_json(out, path)
    return path, len(out), skipped


def statistics(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean nodes, edges and hops per problem, and the share with a decoy-free first hop
    (every child of the root on a shortest path), for comparing data sets."""
    nodes = [len({x for e in r["edges"] for x in e} | {r["root"]}) for r in rows]
    edges = [len(r["edges"]) for r in rows]
    hops = [len(r["frontier"]) if "frontier" in r else len(r["steps"]) for r in rows]
    forced = []
    for r in rows:
        kids = {v for u, v in r["edges"] if u == r["root"]}
        first = set(int(x) for x in r["frontier"][0]) if "frontier" in r else set()
        forced.append(kids <= first)
    return {"nodes": float(np.mean(nodes)), "edges": float(np.mean(edges)), "hops": float(np.mean(hops)),
            "first_hop_forced": float(np.mean(forced))}
