"""The report's summary and per-class tables (csv, markdown, HTML) from the results table
(rules/report.smk, segcore/report/tables.py)."""
import argparse
import sys

from segcore import preflight
from segcore.report import tables


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", required=True, help="results.csv of the results_table rule")
    for kind in ("summary", "per-class"):
        for fmt in ("csv", "md", "html"):
            p.add_argument(f"--{kind}-{fmt}", required=True, help=f"{kind} table to write ({fmt})")
    a = p.parse_args()
    results = tables.read_results(a.results)
    tables.write_table(tables.summary_table(results), "summary", a.summary_csv, a.summary_md, a.summary_html)
    tables.write_table(tables.per_class_table(results), "per_class", a.per_class_csv, a.per_class_md,
                       a.per_class_html)
    print(f"{a.results}: {len(results)} rows -> {a.summary_md}, {a.per_class_md}", flush=True)


if __name__ == "__main__":
    sys.exit(preflight.run_script(main, "report_tables.py"))
