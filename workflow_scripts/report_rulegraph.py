"""The workflow's rule graph as a figure, drawn with matplotlib (rules/report.smk,
segcore/report/rulegraph.py)."""
import argparse
import json
import sys

from segcore import preflight
from segcore.report.rulegraph import plot_rulegraph


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--graph", required=True,
                   help='JSON {"nodes": [rule, ...], "edges": [[from, to], ...], "highlight": [rule, ...]}')
    p.add_argument("--out", required=True, help="figure to write (.svg)")
    a = p.parse_args()
    try:
        g = json.loads(a.graph)
        nodes, edges = list(g["nodes"]), [tuple(e) for e in g["edges"]]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError('--graph: expected JSON {"nodes": [...], "edges": [[from, to], ...]}') from None
    plot_rulegraph(nodes, edges, a.out, highlight=set(g.get("highlight", ())))
    print(f"{len(nodes)} rules, {len(edges)} edges -> {a.out}", flush=True)


if __name__ == "__main__":
    sys.exit(preflight.run_script(main, "report_rulegraph.py"))
