"""The cost of every job (wall time, peak memory, GPU-hours) from the rules' benchmark files:
one table per job, one per rule, and a figure (rules/report.smk, segcore/report/cost.py)."""
import argparse
import json
import sys

from segcore import preflight
from segcore.report.cost import cost_by_rule, cost_table, plot_cost
from segcore.report.tables import write_frame


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", required=True, help="JSON list of [rule, wildcards, benchmark tsv], one per job")
    p.add_argument("--jobs-csv", required=True, help="per-job table to write (csv)")
    p.add_argument("--jobs-html", required=True, help="per-job table to write (HTML)")
    p.add_argument("--rules-csv", required=True, help="per-rule table to write (csv)")
    p.add_argument("--rules-md", required=True, help="per-rule table to write (markdown)")
    p.add_argument("--rules-html", required=True, help="per-rule table to write (HTML)")
    p.add_argument("--plot", required=True, help="figure to write (.svg or .png)")
    a = p.parse_args()
    try:
        jobs = json.loads(a.jobs)
    except json.JSONDecodeError:
        raise ValueError("--jobs: not JSON") from None
    if not jobs or not all(isinstance(j, list) and len(j) == 3 for j in jobs):
        raise ValueError("--jobs: expected a non-empty list of [rule, wildcards, benchmark tsv]")
    table = cost_table([tuple(j) for j in jobs])
    by_rule = cost_by_rule(table)
    write_frame(table, "Cost of every job (wall s, peak memory MB, GPU-hours)", a.jobs_csv, out_html=a.jobs_html)
    write_frame(by_rule, "Cost per rule (wall s summed over its jobs, peak memory MB, GPU-hours)", a.rules_csv,
                a.rules_md, a.rules_html)
    plot_cost(by_rule, a.plot)
    print(f"{len(table)} jobs, {table['wall_s'].sum():.0f} s of job wall time -> {a.rules_md}", flush=True)


if __name__ == "__main__":
    sys.exit(preflight.run_script(main, "report_cost.py"))
