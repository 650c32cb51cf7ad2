"""Probing continuous thoughts against the BFS frontier (the analysis of "Reasoning by
Superposition", Zhu, Hao et al. 2025, arXiv 2505.12514, section 5).

Each continuous thought is decoded through the LM head (`coconut.thought_topk`, the
`thoughts` field of predictions.jsonl: per thought, its top-k tokens with probabilities).
Thought i (1-based, the state fed into latent slot i) is compared with depth i of the graph:

    reach      every node at distance i from the root (the BFS frontier)
    frontier   the nodes at distance i on a shortest path to the target

Per thought index, over the problems deep enough to have that depth:

    frontier_share   of the |reach| highest-ranked node tokens, the share that lies in reach
    chance_share     the same share for a random ranking of the problem's nodes (|reach| / nodes)
    top1_in_reach    the highest-ranked node is in reach
    top1_on_path     the highest-ranked node is on a shortest path (frontier)

A thought that holds the frontier "in superposition" ranks the whole BFS layer first, so its
frontier_share is near 1 while chance_share is the layer's share of the graph.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def probe_row(thoughts: Sequence[Sequence[Sequence[Any]]], graph: dict[str, Any]) -> list[dict[str, float]]:
    """Per-thought probe values of one problem. `thoughts[i]` is a list of (token, prob)
    pairs, best first; `graph` has `edges`, `root`, `reach` and `frontier` (graph-token rows)."""
    nodes = {str(v) for e in graph["edges"] for v in e} - {str(graph["root"])}
    out = []
    for i, top in enumerate(thoughts):
        if i >= len(graph["reach"]):
            break
        reach, path = set(map(str, graph["reach"][i])), set(map(str, graph["frontier"][i]))
        ranking = [str(t).strip() for t, _ in top]
        ranking = [t for t in ranking if t in nodes]
        k = len(reach)
        hit = len(set(ranking[:k]) & reach)
        out.append({
            "frontier_share": hit / k,
            "chance_share": k / max(len(nodes), 1),
            "top1_in_reach": float(bool(ranking) and ranking[0] in reach),
            "top1_on_path": float(bool(ranking) and ranking[0] in path),
        })
    return out


def frontier_probe(rows: Sequence[tuple[Sequence, dict[str, Any]]]) -> dict[str, Any]:
    """Aggregates `probe_row` over (thoughts, graph) pairs: {"by_thought": [{thought, n,
    frontier_share, chance_share, top1_in_reach, top1_on_path}, ...]} (means per thought index)."""
    per: dict[int, list[dict[str, float]]] = {}
    for thoughts, graph in rows:
        for i, v in enumerate(probe_row(thoughts, graph)):
            per.setdefault(i, []).append(v)
    by = []
    for i in sorted(per):
        vals = per[i]
        by.append({"thought": i + 1, "n": len(vals),
                   **{k: float(np.mean([v[k] for v in vals])) for k in vals[0]}})
    return {"by_thought": by}


def format_probe(probe: dict[str, Any]) -> str:
    """`frontier_probe`'s result as a table (one row per continuous thought)."""
    lines = ["thought probe (test): per thought, its top-ranked nodes through the LM head vs the BFS frontier",
             f"{'thought':>7} {'in frontier':>12} {'chance':>7} {'top-1 reach':>12} {'top-1 path':>11} {'n':>5}"]
    for t in probe["by_thought"]:
        lines.append(f"{t['thought']:>7} {100 * t['frontier_share']:>11.1f}% {100 * t['chance_share']:>6.1f}% "
                     f"{100 * t['top1_in_reach']:>11.1f}% {100 * t['top1_on_path']:>10.1f}% {t['n']:>5}")
    return "\n".join(lines)


def plot_probe(path: str, probe: dict[str, Any]) -> str:
    """A PNG of `frontier_probe`'s result: per continuous thought (= depth), grouped bars of the
    share of its top-|frontier| nodes in the BFS frontier, its top-1 node on a shortest path,
    and chance. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = probe["by_thought"]
    xs = np.arange(len(by))
    bars = (("top-|frontier| nodes in the BFS frontier", "frontier_share"),
            ("top-1 node on a shortest path", "top1_on_path"), ("chance (frontier / nodes)", "chance_share"))
    fig, ax = plt.subplots(figsize=(7, 4))
    w = 0.8 / len(bars)
    for i, (label, key) in enumerate(bars):
        ax.bar(xs + (i - 1) * w, [t[key] for t in by], w, label=label)
    ax.set_xticks(xs, [str(t["thought"]) for t in by])
    ax.set_xlabel("continuous thought (= depth in the graph)")
    ax.set_ylabel("share of test problems")
    ax.set_ylim(0, 1)
    ax.set_title("what each continuous thought encodes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
