"""`snakemake --report report.html` after the tiny workflow run (the session fixture
`tiny_workflow`, tests/conftest.py): the report's tables and figures, and the page itself in a
real browser (headless Chromium from Debian, driven over the DevTools protocol: tests/browser.py).

Set SEGCORE_REPORT_SCREENSHOTS=<folder> to keep the screenshots the browser test takes."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest

from segcore import stages
from workflow_helpers import planned_jobs, snakemake, tiny_config, write_config

pytestmark = pytest.mark.workflow

CHAINS = ("gta5_to_cityscapes", "synthia_to_cityscapes")
ITEMS = {  # what the report shows: path -> category
    "results/tables/summary.html": "1. Results", "results/tables/per_class.html": "1. Results",
    **{f"results/report/{c}/progression.svg": "2. Stage progression" for c in CHAINS},
    **{f"results/report/{c}/per_class_iou.svg": "3. IoU per class" for c in CHAINS},
    **{f"results/report/{c}/overlays.png": "4. Predictions" for c in CHAINS},
    **{f"results/report/{c}/pseudo_label_quality.svg": "5. Pseudo-label quality" for c in CHAINS},
    "results/report/cost/jobs.html": "6. Cost", "results/report/cost/rules.html": "6. Cost",
    "results/report/cost/cost.svg": "6. Cost", "results/report/rulegraph.svg": "7. Workflow",
}
META_RULES = ("report_cost", "report_rulegraph")


@pytest.fixture(scope="module")
def report(tiny_workflow, tmp_path_factory):
    repo, work = tiny_workflow
    out = tmp_path_factory.mktemp("report") / "report.html"
    proc = snakemake(work, "--report", str(out), snakefile=repo / "Snakefile")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return repo, work, out


def _dry_run(repo, work, *args):
    proc = snakemake(work, "-n", "-p", *args, snakefile=repo / "Snakefile")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_summary_and_per_class_tables_follow_the_results_table_and_fit_a_screen(report):
    _, work, _ = report
    results = pd.read_csv(work / "results/tables/results.csv")
    summary = pd.read_csv(work / "results/tables/summary.csv")
    per_class = pd.read_csv(work / "results/tables/per_class.csv")
    assert len(per_class) == len(results)
    # each row's last checkpoint, then its best-on-val one where the results table has it
    best = results["best_on_val_mIoU"].notna()
    assert 0 < best.sum() < len(results) and len(summary) == len(results) + best.sum()
    last = summary[summary["checkpoint"] == "last"]
    assert len(last) == len(results) and set(summary["checkpoint"]) == {"last", "best-on-val"}
    assert last["mIoU"].tolist() == pytest.approx(results["mIoU"].tolist(), nan_ok=True)
    assert last["diff"].tolist() == pytest.approx((results["mIoU"] - results["published"]).tolist(), nan_ok=True)
    assert summary.loc[summary["checkpoint"] == "best-on-val", "mIoU"].tolist() == pytest.approx(
        results.loc[best, "best_on_val_mIoU"].tolist())
    assert per_class["sidew"].tolist() == pytest.approx(results["iou_sidewalk"].tolist(), nan_ok=True)
    for name, width in (("summary", 100), ("per_class", 180), ("results", 10_000)):
        md = (work / f"results/tables/{name}.md").read_text()
        assert max(len(line) for line in md.splitlines()) <= width, name
    per_class_md = (work / "results/tables/per_class.md").read_text()
    synthia = per_class_md.split("## SYNTHIA", 1)[1]
    assert "| terr |" not in synthia and "| terr |" in per_class_md  # the 16-class protocol


def test_cost_table_has_every_job_of_the_run(report):
    _, work, _ = report
    jobs = pd.read_csv(work / "results/report/cost/jobs.csv")
    files = sorted(str(p.relative_to(work / "logs/benchmark")) for p in (work / "logs/benchmark").rglob("*.tsv"))
    files = [f for f in files if not f.startswith(META_RULES)]
    assert len(jobs) == len(files)
    assert (jobs["wall_s"] > 0).all() and (jobs["max_rss_mb"].dropna() >= 0).all()
    # Snakemake samples memory once a second or so: a job of a few seconds has a peak recorded
    assert (jobs.loc[jobs["wall_s"] > 5, "max_rss_mb"] > 0).all()
    assert (jobs["gpu_hours"] == 0).all()  # extended benchmark files: local jobs have no GPUs
    rules = pd.read_csv(work / "results/report/cost/rules.csv").set_index("rule")
    assert rules.loc["evaluate", "jobs"] == 2 * 20 and rules["wall_s"].is_monotonic_decreasing


def test_drawn_rule_graph_is_snakemakes(report):
    repo, work, _ = report
    proc = snakemake(work, "--rulegraph", snakefile=repo / "Snakefile")
    assert proc.returncode == 0, proc.stderr[-2000:]
    labels = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', proc.stdout, re.M))
    theirs = {(labels[a], labels[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", proc.stdout, re.M)}
    theirs = {e for e in theirs if not set(e) & set(META_RULES)}
    out = _dry_run(repo, work, "results/report/rulegraph.svg", "--forcerun", "report_rulegraph")
    graph = json.loads(shlex.split(re.search(r"--graph ('.*?') --out", out).group(1))[0])
    assert {tuple(e) for e in graph["edges"]} == theirs
    assert set(graph["nodes"]) == set(labels.values()) - set(META_RULES)


def test_a_changed_overlay_setting_reruns_only_the_overlays(report):
    repo, work, _ = report
    plans = []
    for overlays in ({"overlay_images": ["val/frankfurt/frankfurt_000000_000019"]},
                     {"overlay_images": 2, "overlay_runs": ["proda/stage3"]}):
        write_config(work, tiny_config(report=overlays))
        try:
            out = _dry_run(repo, work)
        finally:
            write_config(work, tiny_config())
        plans.append(planned_jobs(out))
    assert plans[0] == {"report_overlays": 2, "report_cost": 1, "all": 1}
    # fewer runs: the overlays read fewer models, and the rule graph loses those edges
    assert plans[1] == {"report_overlays": 2, "report_rulegraph": 1, "report_cost": 1, "all": 1}
    assert "--run 'proda stage3' results/gta5_to_cityscapes/proda/stage3/model.pt --chain" in out


def test_overlay_run_outside_the_table_stops_at_parse_time(report):
    repo, work, _ = report
    cfg = tiny_config(report={"overlay_runs": ["proda/stage9"]})
    write_config(work, cfg)
    try:
        proc = snakemake(work, "-n", snakefile=repo / "Snakefile")
    finally:
        write_config(work, tiny_config())
    assert proc.returncode != 0
    assert "Invalid configuration: config key 'report.overlay_runs': 'proda/stage9' is not a run" in proc.stderr


def test_report_page_loads_in_a_browser_with_its_tables_and_images(report, tmp_path):
    from browser import Browser

    assert Path("/usr/bin/chromium").exists(), "needs Debian's chromium: tests/run.sh installs it"

    _, _, html = report
    with Browser() as b:
        b.open(html.as_uri())
        b.wait_for("document.querySelector('#app') && document.querySelector('#app').innerText.length > 50")
        shown = b.evaluate("JSON.stringify(Object.fromEntries(Object.entries(categories).flatMap(([c, subs]) =>"
                           " Object.values(subs).flat().map(p => [p, c]))))")
        assert json.loads(shown) == ITEMS
        captions = b.evaluate("Object.values(results).map(r => r.caption.length)")
        assert min(captions) > 100  # every item says what it is and where it comes from
        # every image decodes, every table holds rows (data URIs: decoded in the page)
        sizes = b.evaluate("Promise.all(Object.entries(results).filter(([p, r]) => r.mime_type.startsWith('image/'))"
                           ".map(([p, r]) => new Promise(ok => { const i = new Image();"
                           " i.onload = () => ok([p, i.naturalWidth, i.naturalHeight]);"
                           " i.onerror = () => ok([p, 0, 0]);"
                           " i.src = r.data_uri; })))")
        assert len(sizes) == sum(p.endswith((".svg", ".png")) for p in ITEMS)
        assert all(w > 100 and h > 100 for _, w, h in sizes), sizes
        rows = b.evaluate("Object.fromEntries(Object.entries(results).filter(([p, r]) => r.mime_type === 'text/html')"
                          ".map(([p, r]) => { const d = new DOMParser().parseFromString("
                          "new TextDecoder().decode(Uint8Array.from(atob(r.data_uri.split(',')[1]),"
                          " c => c.charCodeAt(0))),"
                          " 'text/html'); return [p, d.querySelectorAll('table tbody tr').length]; }))")
        # a row per run, and a best-on-val row for each of the 9 runs per chain that keep one
        assert rows["results/tables/per_class.html"] == 2 * 20
        assert rows["results/tables/summary.html"] == 2 * (20 + len(stages.BEST_ON_VAL_RUNS))
        assert rows["results/report/cost/jobs.html"] > 100 and rows["results/report/cost/rules.html"] > 20
        # open the summary table and an overlay figure as a person would, and take screenshots
        shots = []
        for path, kind in (("results/tables/summary.html", "html"), ("results/report/gta5_to_cityscapes/overlays.png",
                                                                      "img")):
            b.evaluate(f"app.showCategory({json.dumps(ITEMS[path])}); app.setView({{content: '{kind}',"
                       f" contentPath: results[{json.dumps(path)}].data_uri, resultPath: {json.dumps(path)}}}); true")
            b.wait_for("document.querySelector('iframe, #app img[src^=\"data:\"]') !== null")
            b.evaluate("document.querySelectorAll('*').forEach(e => { e.scrollTop = 0; }); true")
            shots.append(tmp_path / f"{Path(path).stem}.png")
            b.screenshot(shots[-1])
        assert b.errors() == []
    assert all(s.stat().st_size > 10_000 for s in shots)
    keep = os.environ.get("SEGCORE_REPORT_SCREENSHOTS")
    if keep:
        for s in shots:
            shutil.copy(s, Path(keep) / s.name)
