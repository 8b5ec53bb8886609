"""The stage-progression plot and the per-class IoU heatmap of one chain, from the results
table (rules/report.smk, segcore/report/)."""
import argparse
import sys

from segcore import preflight
from segcore.report.heatmap import plot_heatmap
from segcore.report.progression import plot_progression
from segcore.report.tables import read_results


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", required=True, help="results.csv of the results_table rule")
    p.add_argument("--chain", required=True, help="the chain to plot (gta5_to_cityscapes, ...)")
    p.add_argument("--progression", required=True, help="stage-progression plot to write (.svg or .png)")
    p.add_argument("--heatmap", required=True, help="per-class IoU heatmap to write (.svg or .png)")
    a = p.parse_args()
    results = read_results(a.results)
    if not (results["chain"] == a.chain).any():
        raise ValueError(f"{a.results}: no rows of chain {a.chain!r}")
    plot_progression(results, a.chain, a.progression)
    plot_heatmap(results, a.chain, a.heatmap)
    print(f"{a.chain}: {a.progression}, {a.heatmap}", flush=True)


if __name__ == "__main__":
    sys.exit(preflight.run_script(main, "report_plots.py"))
