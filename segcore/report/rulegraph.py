"""The workflow's rule graph (what ``snakemake --rulegraph`` prints) drawn with matplotlib, so
that no graphviz is needed: rules in layers from the data to ``all``, edges as arrows (an edge
that closes a cycle, e.g. hard_labels <-> distill_stage2, drawn curved)."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch

from .style import save

__all__ = ["layout", "plot_rulegraph"]


def _acyclic(nodes: list[str], edges: list[tuple[str, str]]) -> tuple[list, list]:
    """(forward edges, back edges): a depth-first search from the nodes in order, successors in
    node order too (the order the rules are defined); an edge to a node still on the search's
    path closes a cycle."""
    unknown = sorted({n for e in edges for n in e} - set(nodes))
    if unknown:
        raise ValueError(f"rule graph: edge to unknown rule(s) {', '.join(unknown)}")
    rank = {n: i for i, n in enumerate(nodes)}
    succ = {n: [] for n in nodes}
    for a, b in sorted(edges, key=lambda e: (rank[e[0]], rank[e[1]])):
        succ[a].append(b)
    state, back = {}, set()

    def visit(n):
        state[n] = 1
        for m in succ[n]:
            if state.get(m) == 1:
                back.add((n, m))
            elif m not in state:
                visit(m)
        state[n] = 2

    for n in nodes:
        if n not in state:
            visit(n)
    return [e for e in edges if e not in back], sorted(back)


def layout(nodes: list[str], edges: list[tuple[str, str]]) -> tuple[dict[str, tuple[float, float]], list]:
    """Positions {rule: (x, layer)}: longest-path layers, order within a layer by the mean
    position of its neighbours (a few sweeps); and the back edges."""
    fwd, back = _acyclic(nodes, edges)
    preds = {n: [a for a, b in fwd if b == n] for n in nodes}
    layer: dict[str, int] = {}

    def depth(n):
        if n not in layer:
            layer[n] = 1 + max((depth(p) for p in preds[n]), default=-1)
        return layer[n]

    for n in nodes:
        depth(n)
    layers = [[n for n in nodes if layer[n] == i] for i in range(max(layer.values(), default=-1) + 1)]
    pos = {n: (float(i), float(layer[n])) for lay in layers for i, n in enumerate(lay)}
    nbrs = {n: [a for a, b in fwd if b == n] + [b for a, b in fwd if a == n] for n in nodes}
    for sweep in range(6):
        order = layers if sweep % 2 == 0 else layers[::-1]
        for lay in order:
            key = {n: (sum(pos[m][0] for m in nbrs[n]) / len(nbrs[n]) if nbrs[n] else pos[n][0]) for n in lay}
            lay.sort(key=lambda n: key[n])
            width = max(len(x) for x in layers)
            off = (width - len(lay)) / 2
            for i, n in enumerate(lay):
                pos[n] = (i + off, pos[n][1])
    return pos, back


def plot_rulegraph(nodes: list[str], edges: list[tuple[str, str]], out, highlight=()) -> None:
    """``highlight``: rules drawn in the training colour (the others: inference, data, report)."""
    pos, back = layout(nodes, edges)
    width = max(x for x, _ in pos.values()) + 1
    depth = max(y for _, y in pos.values()) + 1
    fig, ax = plt.subplots(figsize=(max(6.0, 1.75 * width), 0.75 * depth + 0.6))
    for a, b in edges:
        (x0, y0), (x1, y1) = pos[a], pos[b]
        curved = (a, b) in back or a == b
        ax.add_patch(FancyArrowPatch((x0, -y0), (x1, -y1), arrowstyle="-|>", mutation_scale=8, lw=0.6,
                                     color="#c05050" if curved else "#555555", shrinkA=9, shrinkB=9,
                                     connectionstyle="arc3,rad=0.35" if curved else "arc3"))
    for n, (x, y) in pos.items():
        colour = "#ffd9a8" if n in highlight else "#e0e0e0" if n == "all" else "#cfe3f7"
        ax.text(x, -y, n, ha="center", va="center", fontsize=7,
                bbox={"boxstyle": "round,pad=0.3", "fc": colour, "ec": "#555555", "lw": 0.6})
    ax.set_xlim(-0.7, width - 0.3)
    ax.set_ylim(-depth + 0.4, 0.6)
    ax.axis("off")
    ax.set_title(f"Rule graph: {len(nodes)} rules, {len(edges)} edges (orange: training stages; "
                 "red arrows close a cycle between rules)")
    save(fig, out)
