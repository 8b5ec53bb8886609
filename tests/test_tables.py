import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segcore.data.classes import CLASSES19
from segcore.metrics import summarize
from segcore.tables import COLUMNS, load_published, results_table, write_tables

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = Path(__file__).parent / "data" / "published_results.csv"


def _metrics(path: Path, num_classes: int, seed: int) -> dict:
    """A summarize() JSON from a random confusion matrix."""
    rng = np.random.default_rng(seed)
    cm = rng.integers(0, 50, size=(num_classes, num_classes)) + np.diag(rng.integers(100, 1000, num_classes))
    s = summarize(cm, num_classes)
    path.write_text(json.dumps(s))
    return s


@pytest.fixture
def entries(tmp_path):
    spec = [  # deliberately not in table order
        ("synthia_to_cityscapes", "proda", "stage3", 16),
        ("gta5_to_cityscapes", "oracle", "oracle", 19),
        ("gta5_to_cityscapes", "proda", "stage3", 19),
        ("gta5_to_cityscapes", "ddb", "round2_ckd", 19),
        ("gta5_to_cityscapes", "cpsl", "stage1", 19),
        ("synthia_to_cityscapes", "source_only", "source_only", 16),
        ("gta5_to_cityscapes", "proda", "warmup", 19),
        ("synthia_to_cityscapes", "proda", "warmup", 16),
        ("gta5_to_cityscapes", "source_only", "source_only", 19),
    ]
    out, summaries = [], {}
    for i, (chain, method, stage, n) in enumerate(spec):
        p = tmp_path / f"{chain}_{method}_{stage}.json"
        summaries[(chain, method, stage)] = _metrics(p, n, i)
        out.append({"chain": chain, "method": method, "stage": stage, "metrics": str(p)})
    out[2]["note"] = "student init: SimCLR rule on target images"
    return out, summaries


def test_load_published():
    df = load_published(PUBLISHED)
    assert {"method", "stage", "chain", "metric", "value", "source"} <= set(df.columns)
    assert len(df) > 10


def test_rows_order_and_columns(entries):
    ents, _ = entries
    df = results_table(ents, published_csv=PUBLISHED)
    assert list(df.columns) == COLUMNS
    assert [f"iou_{c}" for c in CLASSES19] == [c for c in COLUMNS if c.startswith("iou_")]
    assert list(zip(df["chain"], df["method"], df["stage"])) == [
        ("gta5_to_cityscapes", "source_only", "source_only"),
        ("gta5_to_cityscapes", "proda", "warmup"),
        ("gta5_to_cityscapes", "proda", "stage3"),
        ("gta5_to_cityscapes", "cpsl", "stage1"),
        ("gta5_to_cityscapes", "ddb", "round2_ckd"),  # not in METHOD_ORDER: before oracle
        ("gta5_to_cityscapes", "oracle", "oracle"),
        ("synthia_to_cityscapes", "source_only", "source_only"),
        ("synthia_to_cityscapes", "proda", "warmup"),
        ("synthia_to_cityscapes", "proda", "stage3"),
    ]
    assert (df.loc[df.chain == "gta5_to_cityscapes", "metric"] == "mIoU19").all()
    assert (df.loc[df.chain == "synthia_to_cityscapes", "metric"] == "mIoU16").all()


def test_values_and_published_numbers(entries):
    ents, summaries = entries
    df = results_table(ents, published_csv=PUBLISHED).set_index(["chain", "method", "stage"])

    row = df.loc[("gta5_to_cityscapes", "proda", "stage3")]
    s = summaries[("gta5_to_cityscapes", "proda", "stage3")]
    assert row["mIoU"] == s["mIoU19"]  # full precision
    assert math.isnan(row["mIoU13"])
    assert row["published"] == 57.5
    assert math.isnan(row["published_mIoU13"])
    assert "README" in row["published_source"]
    assert row["note"] == "student init: SimCLR rule on target images"
    for c in CLASSES19:
        assert row[f"iou_{c}"] == s["iou"][c]

    row = df.loc[("synthia_to_cityscapes", "proda", "stage3")]
    s = summaries[("synthia_to_cityscapes", "proda", "stage3")]
    assert row["mIoU"] == s["mIoU16"]
    assert row["mIoU13"] == s["mIoU13"]
    assert row["published"] == 55.5
    assert row["published_mIoU13"] == 62.0
    for c in ("terrain", "truck", "train"):  # not in the 16-class protocol
        assert math.isnan(row[f"iou_{c}"])
    assert row["iou_road"] == s["iou"]["road"]

    row = df.loc[("synthia_to_cityscapes", "proda", "warmup")]
    assert row["published"] == 41.4 and math.isnan(row["published_mIoU13"])

    # README row preferred over the training-log row (55.66)
    row = df.loc[("gta5_to_cityscapes", "cpsl", "stage1")]
    assert row["published"] == 55.7
    assert row["published_source"] == "CPSL README (released checkpoints)"
    assert df.loc[("gta5_to_cityscapes", "ddb", "round2_ckd"), "published"] == 62.7

    for key in [("gta5_to_cityscapes", "source_only", "source_only"), ("gta5_to_cityscapes", "oracle", "oracle"),
                ("synthia_to_cityscapes", "source_only", "source_only")]:
        assert math.isnan(df.loc[key, "published"])
        assert pd.isna(df.loc[key, "published_source"])
    assert math.isnan(df.loc[("gta5_to_cityscapes", "proda", "stage3"), "best_on_val_mIoU"])


def test_without_published_csv(entries):
    ents, _ = entries
    df = results_table(ents)
    assert df["published"].isna().all()
    assert df["published_source"].isna().all()


def test_readme_preference_and_baselines_with_fabricated_csv(tmp_path):
    csv = tmp_path / "pub.csv"
    csv.write_text(
        "method,stage,chain,metric,value,source\n"
        "proda,stage1,gta5_to_cityscapes,mIoU19,50.0,some paper table\n"
        "proda,stage1,gta5_to_cityscapes,mIoU19,53.7,ProDA README\n"
        "proda,stage2,gta5_to_cityscapes,mIoU19,56.0,paper A\n"
        "proda,stage2,gta5_to_cityscapes,mIoU19,56.9,paper B\n"
        "oracle,oracle,gta5_to_cityscapes,mIoU19,70.0,paper\n"
    )
    ents = []
    for i, (m, st) in enumerate([("proda", "stage1"), ("proda", "stage2"), ("oracle", "oracle")]):
        p = tmp_path / f"{i}.json"
        _metrics(p, 19, i)
        ents.append({"chain": "gta5_to_cityscapes", "method": m, "stage": st, "metrics": str(p)})
    df = results_table(ents, published_csv=csv).set_index(["method", "stage"])
    assert df.loc[("proda", "stage1"), "published"] == 53.7
    assert df.loc[("proda", "stage2"), "published"] == 56.0  # no README: the first row
    assert df.loc[("proda", "stage2"), "published_source"] == "paper A"
    assert math.isnan(df.loc[("oracle", "oracle"), "published"])


def test_best_on_val_column(tmp_path):
    last, best = tmp_path / "last.json", tmp_path / "best.json"
    _metrics(last, 16, 1)
    sb = _metrics(best, 16, 2)
    df = results_table([{"chain": "synthia_to_cityscapes", "method": "proda", "stage": "stage1",
                         "metrics": str(last), "metrics_best": str(best)}])
    assert df.loc[0, "best_on_val_mIoU"] == sb["mIoU16"]
    assert df.loc[0, "best_on_val_mIoU13"] == sb["mIoU13"]


def test_errors(tmp_path):
    p = tmp_path / "m.json"
    _metrics(p, 19, 0)
    e = {"chain": "gta5_to_cityscapes", "method": "proda", "stage": "warmup", "metrics": str(p)}
    with pytest.raises(ValueError, match="duplicate"):
        results_table([e, dict(e)])
    with pytest.raises(ValueError, match="16"):
        results_table([dict(e, chain="synthia_to_cityscapes")])
    with pytest.raises(FileNotFoundError, match="nope.json"):
        results_table([dict(e, metrics=str(tmp_path / "nope.json"))])


def test_write_tables(entries, tmp_path):
    ents, summaries = entries
    df = results_table(ents, published_csv=PUBLISHED)
    out_csv, out_md = tmp_path / "out" / "table.csv", tmp_path / "out" / "table.md"
    write_tables(df, out_csv, out_md)
    assert sorted(p.name for p in out_csv.parent.iterdir()) == ["table.csv", "table.md"]  # no temp files

    back = pd.read_csv(out_csv)
    assert list(back.columns) == COLUMNS
    assert back.loc[2, "mIoU"] == summaries[("gta5_to_cityscapes", "proda", "stage3")]["mIoU19"]  # full precision
    assert math.isnan(back.loc[8, "iou_terrain"])

    md = out_md.read_text()
    lines = md.strip().splitlines()
    assert len(lines) == 2 + len(df)
    assert lines[0].startswith("| chain") and "iou_bicycle" in lines[0] and "note" in lines[0]
    assert "nan" not in md.lower().replace("synthia", "").replace("cityscapes", "")
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    table = [dict(zip(header, row)) for row in cells]
    s = summaries[("gta5_to_cityscapes", "proda", "stage3")]
    assert table[2]["mIoU"] == f"{s['mIoU19']:.1f}"
    assert table[2]["published"] == "57.5"
    assert table[2]["note"] == "student init: SimCLR rule on target images"
    assert table[0]["published"] == "" and table[0]["mIoU13"] == ""
    assert table[8]["published_mIoU13"] == "62.0"
    assert table[8]["iou_truck"] == ""
    s = summaries[("synthia_to_cityscapes", "proda", "stage3")]
    assert table[8]["mIoU13"] == f"{s['mIoU13']:.1f}"
    assert all(len(v.split(".")[-1]) == 1 for row in table for k, v in row.items()
               if k in ("mIoU", "iou_road", "published") and v)


def _cli():
    spec = importlib.util.spec_from_file_location("make_table", REPO / "workflow_scripts" / "make_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli(entries, tmp_path, capsys):
    ents, _ = entries
    argv = []
    for e in ents:
        argv += ["--entry", e["chain"], e["method"], e["stage"], e["metrics"]]
    argv += ["--note", "gta5_to_cityscapes", "proda", "warmup", "hello",
             "--published", str(PUBLISHED),
             "--out-csv", str(tmp_path / "t.csv"), "--out-md", str(tmp_path / "t.md")]
    assert _cli().main(argv) == 0
    df = pd.read_csv(tmp_path / "t.csv")
    assert len(df) == len(ents)
    assert df.loc[1, "note"] == "hello"
    assert df.loc[2, "published"] == 57.5


def test_cli_missing_metrics_file(tmp_path, capsys):
    missing = tmp_path / "absent" / "metrics.json"
    rc = _cli().main(["--entry", "gta5_to_cityscapes", "proda", "warmup", str(missing),
                      "--out-csv", str(tmp_path / "t.csv"), "--out-md", str(tmp_path / "t.md")])
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err
    assert not (tmp_path / "t.csv").exists()


def test_several_seeds_give_mean_std_and_count(tmp_path):
    paths = [tmp_path / f"seed{i}.json" for i in range(3)]
    seeds = [_metrics(p, 16, 10 + i) for i, p in enumerate(paths)]
    row = results_table([{"chain": "synthia_to_cityscapes", "method": "proda", "stage": "stage1",
                          "metrics": [str(p) for p in paths]}]).iloc[0]
    for key, col in (("mIoU16", "mIoU"), ("mIoU13", "mIoU13")):
        values = np.array([s[key] for s in seeds])
        assert row[col] == pytest.approx(values.mean())
        assert row[f"{col}_std"] == pytest.approx(values.std(ddof=1))
    assert row["seeds"] == 3
    assert row["iou_road"] == pytest.approx(np.mean([s["iou"]["road"] for s in seeds]))
    assert math.isnan(row["iou_terrain"])  # not a class of the 16-class protocol, in no seed

    one = results_table([{"chain": "synthia_to_cityscapes", "method": "proda", "stage": "stage1",
                          "metrics": str(paths[0])}]).iloc[0]
    assert one["seeds"] == 1 and math.isnan(one["mIoU_std"]) and one["mIoU"] == seeds[0]["mIoU16"]

    out_md = tmp_path / "t.md"
    write_tables(results_table([{"chain": "synthia_to_cityscapes", "method": "proda", "stage": "stage1",
                                 "metrics": [str(p) for p in paths]}]), tmp_path / "t.csv", out_md)
    header, _, cells = (line.strip("|").split("|") for line in out_md.read_text().strip().splitlines())
    shown = dict(zip((c.strip() for c in header), (c.strip() for c in cells)))
    assert shown["mIoU"] == f"{row['mIoU']:.1f} ± {row['mIoU_std']:.1f} (n=3)"
    assert "mIoU_std" not in shown and "seeds" not in shown


def test_seeds_of_a_row_must_agree_and_differ(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    _metrics(a, 19, 1)
    _metrics(b, 16, 2)
    with pytest.raises(ValueError, match="b.json: 16 classes"):
        results_table([{"chain": "gta5_to_cityscapes", "method": "proda", "stage": "stage1",
                        "metrics": [str(a), str(b)]}])
    with pytest.raises(ValueError, match="a.json: the same metrics file twice"):
        results_table([{"chain": "gta5_to_cityscapes", "method": "proda", "stage": "stage1",
                        "metrics": [str(a), str(a)]}])


def test_cli_repeated_entry_adds_a_seed(tmp_path):
    paths = [tmp_path / f"s{i}.json" for i in range(2)]
    seeds = [_metrics(p, 19, i) for i, p in enumerate(paths)]
    argv = [a for p in paths for a in ("--entry", "gta5_to_cityscapes", "proda", "stage1", str(p))]
    assert _cli().main(argv + ["--out-csv", str(tmp_path / "t.csv"), "--out-md", str(tmp_path / "t.md")]) == 0
    df = pd.read_csv(tmp_path / "t.csv")
    assert len(df) == 1 and df.loc[0, "seeds"] == 2
    assert df.loc[0, "mIoU"] == pytest.approx((seeds[0]["mIoU19"] + seeds[1]["mIoU19"]) / 2)


def test_undeclared_stages_follow_the_declared_ones_in_entry_order(tmp_path):
    stages = ["r3_st_cu", "r3_st_ca", "r3_ckd", "r1_st_cu"]  # a third DDB round, not declared
    entries = []
    for i, stage in enumerate(stages):
        _metrics(tmp_path / f"{stage}.json", 19, i)
        entries.append({"chain": "gta5_to_cityscapes", "method": "ddb", "stage": stage,
                        "metrics": str(tmp_path / f"{stage}.json")})
    assert results_table(entries)["stage"].tolist() == ["r1_st_cu", "r3_st_cu", "r3_st_ca", "r3_ckd"]
