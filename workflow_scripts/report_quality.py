"""The pseudo-label quality plot (coverage against precision per class) of one quality table
(rules/report.smk, segcore/report/quality.py)."""
import argparse
import sys

from segcore import preflight
from segcore.report.quality import plot_quality, read_quality


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quality", required=True, help="quality.csv of the seco_quality rule")
    p.add_argument("--chain", required=True, help="its chain (for the title)")
    p.add_argument("--out", required=True, help="plot to write (.svg or .png)")
    a = p.parse_args()
    df, classes = read_quality(a.quality)
    plot_quality(df, classes, a.chain, a.out)
    print(f"{a.quality}: {len(df)} label sets -> {a.out}", flush=True)


if __name__ == "__main__":
    sys.exit(preflight.run_script(main, "report_quality.py"))
