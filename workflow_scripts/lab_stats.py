"""The per-image CIE-LAB statistics of a target train set, read by CPSL's colour transfer of the
source images (segcore/data/lab_transfer.py; rules/data.smk)."""
import argparse
import json
import sys

import torch

from segcore.data.lab_transfer import compute_lab_stats, write_lab_stats
from segcore.preflight import check_data, run_script
from segcore.train.common import image_set


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", required=True, help="JSON: manifest, split, resize of the target train set")
    p.add_argument("--out", required=True, help="statistics file to write (lab_stats_train.json)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: threads - 1)")
    a = p.parse_args()
    torch.set_num_threads(1)  # one image per worker; the workers are the parallelism
    spec = json.loads(a.images)
    check_data(spec, "--images", labels=False)
    ds = image_set(spec, num_classes=19)  # the class count only matters for labels, which are not read
    workers = a.workers if a.workers is not None else max(0, a.threads - 1)
    stats = compute_lab_stats(ds, num_workers=workers, log=lambda s: print(s, flush=True))
    write_lab_stats(a.out, ds.keys, stats, source=spec)
    print(f"{a.out}: LAB statistics of {len(ds)} images; mean of the means {stats[:, 0].mean(0).tolist()}",
          flush=True)


if __name__ == "__main__":
    sys.exit(run_script(main, "lab_stats.py"))
