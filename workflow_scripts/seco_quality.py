"""Pseudo-label quality of label sets against the target train ground truth: per class,
precision and coverage (csv + markdown). Hard stores are measured as they are and, with
--confident, as their confident pixels; SeCo stores as they are. The method never reads
this ground truth."""
import argparse
import csv
import io
import json
import sys

from segcore import preflight
from segcore.atomic import write_text
from segcore.data.datasets import SegmentationDataset
from segcore.pseudo.store import HardStore
from segcore.seco import quality
from segcore.seco.confident import confident_pixels
from segcore.seco.refined_store import RefinedStore


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", required=True,
                   help="JSON: manifest, split, resize of the target train set (with labels)")
    p.add_argument("--num-classes", type=int, required=True, help="the chain's class count (19 or 16)")
    p.add_argument("--hard", action="append", default=[], metavar="NAME=PATH", help="a hard pseudo-label store")
    p.add_argument("--seco", action="append", default=[], metavar="NAME=PATH", help="a SeCo (PSA / SCC) label store")
    p.add_argument("--confident", default="",
                   help="JSON {fraction, scope}: also measure each hard store's confident pixels")
    p.add_argument("--out-csv", required=True, help="the table (csv)")
    p.add_argument("--out-md", required=True, help="the table (markdown)")
    a = p.parse_args()
    spec = json.loads(a.target)
    keys = preflight.check_data(spec, "--target", labels=True)
    sets = [(kind, *item.split("=", 1)) for kind, items in (("hard", a.hard), ("seco", a.seco)) for item in items]
    for kind, name, *path in sets:
        if not path:
            raise ValueError(f"--{kind} {name!r}: expected NAME=PATH")
    stores = [(kind, name, (HardStore if kind == "hard" else RefinedStore)(path, expect_keys=keys,
                                                                          expect_classes=a.num_classes))
              for kind, name, path in sets]
    gt = SegmentationDataset(spec["manifest"], spec["split"], a.num_classes, resize=spec.get("resize"))
    conf = json.loads(a.confident) if a.confident else None
    results = {}
    for kind, name, store in stores:
        if kind == "hard":
            results[name] = quality.quality(quality.counts(
                ((store.get(i)[0].numpy(), gt.load_label(i).numpy()) for i in range(len(keys))), a.num_classes))
            if conf is not None and getattr(store, "conf_encoding", None) != "thresholds":  # rankable only
                labels, _ = confident_pixels(store, conf.get("fraction", 0.5), conf.get("scope", "class"))
                results[f"{name} (confident)"] = quality.quality(quality.counts(
                    ((lab, gt.load_label(i).numpy()) for i, lab in enumerate(labels)), a.num_classes))
        else:
            results[f"{name} ({store.proposer})"] = quality.quality(quality.counts(
                ((store.label(i), gt.load_label(i).numpy()) for i in range(len(keys))), a.num_classes))
    rows = quality.table_rows(results, a.num_classes)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    write_text(a.out_csv, buf.getvalue())
    write_text(a.out_md, quality.markdown(rows, "Pseudo-label quality on target train"))
    print(quality.markdown(rows), flush=True)


if __name__ == "__main__":
    sys.exit(preflight.run_script(main, "seco_quality.py"))
