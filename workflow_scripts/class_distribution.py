"""Class distribution of the warm-up model's argmax predictions on target train, read from its
soft pseudo-labels: CPSL's class prior (rules/cpsl.smk)."""
import argparse
import json
import sys

from segcore import preflight
from segcore.preflight import run_script
from segcore.pseudo.class_distribution import argmax_counts, write_class_distribution
from segcore.pseudo.store import SoftStore


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--soft-labels", required=True, help="soft pseudo-label store of the warm-up model")
    p.add_argument("--target", required=True, help="JSON: manifest, split, resize of the target train set")
    p.add_argument("--num-classes", type=int, required=True, help="classes of the chain (19, or 16 for SYNTHIA)")
    p.add_argument("--out", required=True, help="class distribution JSON to write (share of each class)")
    a = p.parse_args()
    keys = preflight.check_data(json.loads(a.target), "--target", labels=False)
    with SoftStore(a.soft_labels, expect_keys=keys, expect_classes=a.num_classes) as store:
        counts = argmax_counts(store)
    obj = write_class_distribution(a.out, counts, source=a.soft_labels)
    shares = " ".join(f"{n}={v:.4f}" for n, v in zip(obj["classes"], obj["distribution"]))
    print(f"{a.out}: {sum(obj['counts'])} pixels; {shares}", flush=True)


if __name__ == "__main__":
    sys.exit(run_script(main, "class_distribution.py"))
