"""Size and agreement measurement of the pseudo-label stores.

``python -m segcore.pseudo.store [scale]`` measures sizes and agreements on a Cityscapes-size
case (19 classes, soft 129x257, hard 1024x2048; logits = scale x bilinearly upsampled noise).
At scale 5, per image: soft float16 962 kB (38% of the official float32 .npy), soft topk
(k=3) 125 kB (4.9%); hard grid 637 kB (14.9% of the official label PNG + float16 .npy),
hard float16 1.36 MB (31.7%), hard thresholds (0.9/0.95/0.99) 155 kB (3.6%). Of the hard
store's bytes about 95 kB are the label.

``python -m segcore.pseudo.store_measure [scale]`` runs the same measurement.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .hard_store import CONF_ENCODINGS, HardStore, HardWriter
from .soft_store import SOFT_ENCODINGS, SoftStore, SoftWriter
from .store_base import IGNORE


def _smooth_logits(num_classes, hw, seed, scale=5.0, low=(17, 33)):
    """Bilinearly upsampled low-resolution Gaussian noise times ``scale``: [1, C, h, w]."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, num_classes, *low, generator=g)
    return F.interpolate(noise, size=hw, mode="bilinear", align_corners=True) * scale


def _measure(n=3, num_classes=19, soft_hw=(129, 257), full_hw=(1024, 2048), scale=5.0):  # pragma: no cover
    import io
    import tempfile

    import torch.nn.functional as F
    from PIL import Image

    keys = [f"img{i}" for i in range(n)]
    official_soft = 128 + num_classes * soft_hw[0] * soft_hw[1] * 4
    official_conf = 128 + full_hw[0] * full_hw[1] * 2
    logits = [_smooth_logits(num_classes, soft_hw, i, scale) for i in range(n)]
    probs = [lg.softmax(1) for lg in logits]
    print(f"synthetic case: {n} images, C={num_classes}, soft {soft_hw}, hard {full_hw}, "
          f"logits = {scale} x upsampled noise")
    with tempfile.TemporaryDirectory() as tmp:
        for enc in SOFT_ENCODINGS:
            path = Path(tmp) / f"soft_{enc}.h5"
            with SoftWriter(path, keys, num_classes, soft_hw, encoding=enc) as w:
                for i, p in enumerate(probs):
                    w.write(i, p[0])
            store = SoftStore(path, keys, num_classes)
            agree = np.mean([(store[i].argmax(0) == probs[i][0].argmax(0)).float().mean().item() for i in range(n)])
            err = np.mean([(store[i] - probs[i][0]).abs().sum(0).mean().item() for i in range(n)])
            size = path.stat().st_size / n
            print(f"soft {enc:8s}: {size:10,.0f} B/image = {size / official_soft:6.1%} of the official float32 .npy "
                  f"({official_soft:,} B); argmax agreement with float32 {agree:.4%}; mean L1 distance {err:.4f}")
        up = lambda t: F.interpolate(t, size=full_hw, mode="bilinear", align_corners=True)  # noqa: E731
        labels, confs, png = [], [], 0
        for i in range(n):
            # the flipped view's prediction
            flipped = logits[i] + 0.1 * _smooth_logits(num_classes, soft_hw, 1000 + i, scale)
            p = (up(probs[i]) + up(flipped.softmax(1))) / 2
            c, lab = p[0].max(0)
            labels.append(lab.numpy().astype(np.uint8))
            confs.append(c.numpy())
            buf = io.BytesIO()
            Image.fromarray(labels[-1]).save(buf, format="PNG")
            png += len(buf.getvalue())
        official_hard = official_conf + png / n
        for enc in CONF_ENCODINGS:
            path = Path(tmp) / f"hard_{enc}.h5"
            listed = (0.9, 0.95, 0.99) if enc == "thresholds" else None
            with HardWriter(path, keys, full_hw, num_classes, conf_encoding=enc, conf_thresholds=listed) as w:
                for i in range(n):
                    w.write(i, labels[i], confs[i])
            store = HardStore(path, keys, num_classes)
            same = []
            for t in (0.9, 0.95, 0.99):
                for i in range(n):
                    ref = labels[i].astype(np.int64).copy()
                    ref[confs[i].astype(np.float16) <= t] = IGNORE  # the official NumPy expression
                    same.append(np.array_equal(store.thresholded(i, t).numpy(), ref))
            size = path.stat().st_size / n
            frac = np.mean([(c > 0.95).mean() for c in confs])
            print(f"hard conf={enc:7s}: {size:10,.0f} B/image = {size / official_hard:6.1%} of the official "
                  f"PNG + float16 .npy ({official_hard:,.0f} B); thresholded labels identical to the official "
                  f"rule at 0.9/0.95/0.99: {all(same)} ({frac:.1%} of pixels above 0.95)")


if __name__ == "__main__":  # pragma: no cover
    import sys

    _measure(scale=float(sys.argv[1]) if len(sys.argv) > 1 else 5.0)
