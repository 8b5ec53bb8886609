"""The report's tables and figures (segcore/report/) on small made-up inputs: what they hold,
that the same input gives the same bytes, and one-line errors naming the bad file."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from segcore.data.classes import CLASSES16, CLASSES19
from segcore.report import cost, heatmap, progression, quality, rulegraph, style, tables
from segcore.tables import COLUMNS
from workflow_helpers import ROOT, snakemake_env

ROWS = [("source_only", "source_only"), ("proda", "warmup"), ("proda", "stage1"), ("proda", "stage2"),
        ("uvpt", "swin/source"), ("uvpt", "swin/adapted"), ("uvpt", "mit/source"), ("oracle", "oracle")]


def results_frame() -> pd.DataFrame:
    rows = []
    for chain, n in (("gta5_to_cityscapes", 19), ("synthia_to_cityscapes", 16)):
        names = CLASSES19 if n == 19 else CLASSES16
        for k, (method, stage) in enumerate(ROWS):
            row = dict.fromkeys(COLUMNS, math.nan)
            row.update(chain=chain, method=method, stage=stage, metric=f"mIoU{n}", mIoU=20.0 + k,
                       published=40.0 + k if method in ("proda", "uvpt") else math.nan, note=None)
            if n == 16:
                row.update(mIoU13=25.0 + k, published_mIoU13=45.0 + k if method == "proda" else math.nan)
            for i, c in enumerate(names):
                row[f"iou_{c}"] = float((7 * i + k) % 100)
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


@pytest.fixture
def results_csv(tmp_path):
    path = tmp_path / "results.csv"
    results_frame().to_csv(path, index=False)
    return path


def test_summary_has_ours_the_paper_and_the_difference(results_csv, tmp_path):
    df = tables.summary_table(tables.read_results(results_csv))
    row = df[(df.chain == "synthia_to_cityscapes") & (df.stage == "stage1")].iloc[0]
    assert (row.mIoU, row.paper, row["diff"], row.mIoU13, row.diff_mIoU13) == (22.0, 42.0, -20.0, 27.0, -20.0)
    assert set(df.checkpoint) == {"last"} and math.isnan(df.iloc[0]["diff"])
    tables.write_table(df, "summary", tmp_path / "s.csv", tmp_path / "s.md", tmp_path / "s.html")
    md = (tmp_path / "s.md").read_text()
    assert "## GTA5 → Cityscapes (mIoU19" in md and "| proda stage1 | 22.0 | 42.0 | -20.0 | last |" in md
    assert "| run | mIoU16 | paper | Δ | mIoU13 | paper13 | Δ13 | ckpt |" in md
    assert max(map(len, md.splitlines())) <= 100
    assert (tmp_path / "s.html").read_text().count("<tr>") == len(df) + 2  # a header row per chain


def test_summary_over_several_seeds_shows_mean_std_and_count(tmp_path):
    results = results_frame()
    results["seeds"], results["mIoU_std"], results["mIoU13_std"] = 3, 1.25, 0.5
    df = tables.summary_table(results)
    assert (df.seeds == 3).all() and (df.mIoU_std == 1.25).all()
    tables.write_table(df, "summary", tmp_path / "s.csv", tmp_path / "s.md", tmp_path / "s.html")
    md = (tmp_path / "s.md").read_text()
    assert "| proda stage1 | 22.0 ± 1.2 | 42.0 | -20.0 | last | 3 |" in md
    assert "| proda stage1 | 22.0 ± 1.2 | 42.0 | -20.0 | 27.0 ± 0.5 | 47.0 | -20.0 | last | 3 |" in md
    assert "mean ± std over n seeds" in md and max(map(len, md.splitlines())) <= 100
    one = tables.summary_table(results_frame())  # one seed: no ± and no count column
    tables.write_table(one, "summary", tmp_path / "o.csv", tmp_path / "o.md", tmp_path / "o.html")
    assert "±" not in (tmp_path / "o.md").read_text() and (one.seeds == 1).all()


def test_per_class_table_uses_short_names_and_the_chains_classes(results_csv, tmp_path):
    df = tables.per_class_table(tables.read_results(results_csv))
    assert list(df.columns) == ["chain", "method", "stage", *(style.short(c) for c in CLASSES19)]
    tables.write_table(df, "per_class", tmp_path / "p.csv", tmp_path / "p.md", tmp_path / "p.html")
    gta, synthia = (tmp_path / "p.md").read_text().split("## SYNTHIA")
    assert "| terr |" in gta and "terr" not in synthia and "| mbike | bike |" in synthia
    assert max(map(len, (tmp_path / "p.md").read_text().splitlines())) <= 180


@pytest.mark.parametrize("content, message", [
    (None, "results table not found"),
    ("chain,method\nx,y\n", "results table lacks column(s) stage, metric"),
    ("", "cannot read results table"),
])
def test_bad_results_table_is_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "results.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises((ValueError, FileNotFoundError)) as exc:
        tables.read_results(path)
    assert str(path) in str(exc.value) and message in str(exc.value) and "\n" not in str(exc.value)


def test_plots_are_svg_and_the_same_input_gives_the_same_bytes(results_csv, tmp_path):
    results = tables.read_results(results_csv)
    for chain in ("gta5_to_cityscapes", "synthia_to_cityscapes"):
        for name, plot in (("prog", progression.plot_progression), ("heat", heatmap.plot_heatmap)):
            a, b = tmp_path / f"{chain}_{name}_a.svg", tmp_path / f"{chain}_{name}_b.svg"
            plot(results, chain, a)
            plot(results, chain, b)
            assert a.read_bytes() == b.read_bytes() and a.read_text().lstrip().startswith("<?xml")
    heat = (tmp_path / "synthia_to_cityscapes_heat_a.svg").read_text()
    assert ">mbike<" in heat and ">terr<" not in heat  # text stays text (svg.fonttype none)
    prog = (tmp_path / "gta5_to_cityscapes_prog_a.svg").read_text()
    assert ">uvpt<" in prog and ">proda<" in prog and ">oracle<" in prog  # panels and the reference lines
    with pytest.raises(ValueError, match="no rows of chain 'nope'"):
        progression.plot_progression(results, "nope", tmp_path / "x.svg")


def test_progression_has_error_bars_only_over_several_seeds(tmp_path):
    results = results_frame()
    progression.plot_progression(results, "gta5_to_cityscapes", tmp_path / "one.svg")
    results["seeds"], results["mIoU_std"] = 3, 2.0
    progression.plot_progression(results, "gta5_to_cityscapes", tmp_path / "three.svg")
    assert "LineCollection" not in (tmp_path / "one.svg").read_text()
    assert "LineCollection" in (tmp_path / "three.svg").read_text()


def _quality_csv(path, classes):
    rows = []
    for name, cov in (("proda/stage1", 100.0), ("proda/stage1 (confident)", 50.0)):
        row = {"labels": name, "pixel_precision": 80.0, "pixel_coverage": cov, "mean_precision": 70.0}
        row.update({f"precision_{c}": (90.0 if c != "bus" else float("nan")) for c in classes})
        row.update({f"coverage_{c}": cov for c in classes})
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)


def test_quality_plot_has_a_panel_per_label_set(tmp_path):
    path = tmp_path / "quality.csv"
    _quality_csv(path, CLASSES16)
    df, classes = quality.read_quality(path)
    assert classes == list(CLASSES16)
    quality.plot_quality(df, classes, "synthia_to_cityscapes", tmp_path / "q.svg")
    svg = (tmp_path / "q.svg").read_text()
    assert "proda/stage1 (confident)" in svg and ">road<" in svg and ">bus<" not in svg  # no precision: left out
    bad = tmp_path / "bad.csv"
    bad.write_text("labels,precision_road\nx,1\n")
    with pytest.raises(ValueError, match=r"bad.csv: quality table lacks column\(s\) pixel_precision"):
        quality.read_quality(bad)


def test_cost_reads_plain_and_extended_benchmark_files(tmp_path):
    plain = tmp_path / "plain.tsv"
    plain.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                     "7200.0\t2:00:00\t812.5\t1\t1\t1\t0\t0\t90\t6000\n")
    ext = tmp_path / "ext.tsv"
    ext.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\tjobid\t"
                   "rule_name\twildcards\tparams\tthreads\tcpu_usage\tresources\tinput_size_mb\n"
                   "1800.0\t0:30:00\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\t3\tproda_stage1\t{}\t{}\t1\tNA\t"
                   "{'_cores': 16, 'gpu': 4, 'mem_mb': 64000}\t{}\n")
    table = cost.cost_table([("warmup", "chain=gta5_to_cityscapes", str(plain)),
                             ("proda_stage1", "chain=synthia_to_cityscapes", str(ext))])
    assert table.chain.tolist() == ["gta5_to_cityscapes", "synthia_to_cityscapes"]
    assert math.isnan(table.gpu_hours[0]) and table.gpu_hours[1] == pytest.approx(2.0)  # 4 GPUs x 0.5 h
    assert table.max_rss_mb[0] == 812.5 and math.isnan(table.max_rss_mb[1])
    by_rule = cost.cost_by_rule(table)
    assert by_rule.rule.tolist() == ["warmup", "proda_stage1"]  # slowest first
    cost.plot_cost(by_rule, tmp_path / "cost.svg")
    assert ">proda_stage1<" in (tmp_path / "cost.svg").read_text()
    missing = cost.cost_table([("convert", "dataset=gta5", str(tmp_path / "absent.tsv"))])
    assert len(missing) == 1 and missing[["wall_s", "max_rss_mb", "gpu_hours"]].isna().all(axis=None)
    (tmp_path / "log.tsv").write_text("not\ta\tbenchmark\n")
    with pytest.raises(ValueError, match=r"log.tsv: not a Snakemake benchmark file"):
        cost.read_benchmark(tmp_path / "log.tsv")


def test_rule_graph_layers_break_cycles_and_reject_unknown_rules(tmp_path):
    nodes = ["convert", "proda_stage1", "hard_labels", "distill_stage2", "evaluate", "all"]
    edges = [("convert", "proda_stage1"), ("proda_stage1", "hard_labels"), ("hard_labels", "distill_stage2"),
             ("distill_stage2", "hard_labels"), ("proda_stage1", "evaluate"), ("distill_stage2", "evaluate"),
             ("evaluate", "all")]
    pos, back = rulegraph.layout(nodes, edges)
    assert back == [("distill_stage2", "hard_labels")]  # the rule defined first goes first
    layer = {n: y for n, (_, y) in pos.items()}
    assert [layer[n] for n in nodes] == [0, 1, 2, 3, 4, 5]
    rulegraph.plot_rulegraph(nodes, edges, tmp_path / "g.svg", highlight={"proda_stage1"})
    assert all(f">{n}<" in (tmp_path / "g.svg").read_text() for n in nodes)
    with pytest.raises(ValueError, match="unknown rule"):
        rulegraph.layout(["a"], [("a", "b")])


def test_colours_are_the_cityscapes_palette_with_black_for_ignore():
    labels16 = np.array([[0, 15, 255]])
    rgb = style.colourise(labels16, 16)
    assert rgb[0, 0].tolist() == [128, 64, 128] and rgb[0, 1].tolist() == [119, 11, 32]  # road; bicycle is 15 of 16
    assert rgb[0, 2].tolist() == [0, 0, 0]


@pytest.fixture
def tiny_target(tmp_path):
    """A converted target split of three 32x16 images with labels, and a small checkpoint."""
    from segcore.models.checkpoint import save_model
    from segcore.models.deeplabv2 import build_deeplabv2

    rows = []
    rng = np.random.default_rng(0)
    for i in range(3):
        img, lab = tmp_path / f"img{i}.png", tmp_path / f"lab{i}.png"
        Image.fromarray(rng.integers(0, 255, (16, 32, 3), dtype=np.uint8)).save(img)
        Image.fromarray(np.full((16, 32), i, np.uint8)).save(lab)
        rows.append({"key": f"val/city/city_{i}", "image": str(img), "label": str(lab), "split": "val",
                     "width": 32, "height": 16})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    model = tmp_path / "model.pt"
    save_model(model, build_deeplabv2(19, arch="small"), {"arch": "small", "num_classes": 19, "bn_clr": False,
                                                           "stage": "test"})
    return tmp_path / "manifest.csv", model


def test_overlays_predict_the_chosen_images_and_refuse_unknown_keys(tiny_target, tmp_path):
    from segcore.data.datasets import SegmentationDataset
    from segcore.report import overlays

    manifest, model = tiny_target
    ds = SegmentationDataset(manifest, "val", 19, resize=[32, 16], resize_label=False)
    assert overlays.select_images(ds, 2) == [0, 1] and overlays.select_images(ds, ["val/city/city_2"]) == [2]
    with pytest.raises(ValueError, match=r"manifest.csv: split 'val' has no image 'val/x' \(config key report"):
        overlays.select_images(ds, ["val/x"])
    pred = overlays.predict(model, ds, [0, 2], 19)
    assert pred.shape == (2, 16, 32) and pred.dtype == np.uint8 and pred.max() < 19
    overlays.plot_overlays(ds, [0, 2], [("proda stage1", pred)], 19, "gta5_to_cityscapes", tmp_path / "o.png")
    width, height = Image.open(tmp_path / "o.png").size
    assert width > 2 * 256 and height > 3 * 128  # two panels wide, three rows (image, truth, one run)


def test_scripts_print_one_line_naming_the_bad_file(tmp_path):
    bad = tmp_path / "results.csv"
    bad.write_text("chain,method\nx,y\n")
    (tmp_path / "log.tsv").write_text("not\ta\tbenchmark\n")
    for script, args in (("report_plots.py", ["--results", str(bad), "--chain", "x", "--progression",
                                              str(tmp_path / "p.svg"), "--heatmap", str(tmp_path / "h.svg")]),
                         ("report_cost.py", ["--jobs", json.dumps([["evaluate", "", str(tmp_path / "log.tsv")]]),
                                             *(x for k in ("jobs-csv", "jobs-html", "rules-csv", "rules-md",
                                                           "rules-html", "plot")
                                               for x in (f"--{k}", str(tmp_path / f"{k}.out")))])):
        proc = subprocess.run([sys.executable, str(ROOT / "workflow_scripts" / script), *args],
                              capture_output=True, text=True, env=snakemake_env())
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"{script}: error: {tmp_path}"), lines[0]
    assert not list(tmp_path.glob("*.svg")) and not list(tmp_path.glob("*.out"))  # nothing half-written
