"""Pseudo-labels reach the weak crop and the strong view exactly where the pixels went.

The images encode their own labels as colours, so every view of an image can be decoded back
to labels and compared with the pseudo-labels TargetViews moved alongside it."""
import numpy as np
import pandas as pd
import torch

from segcore.data.datasets import SegmentationDataset
from segcore.data.io import write_png
from segcore.data.strong_view import StrongView
from segcore.data.target_views import TargetViews
from segcore.data.transforms import WeakView
from segcore.pseudo.store import HardStore, HardWriter, SoftStore, SoftWriter

C, H, W = 4, 64, 128
COLORS = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def decode(image):  # [3,h,w] -> nearest colour's class
    return torch.cdist(image.permute(1, 2, 0).reshape(-1, 3), COLORS).argmin(1).reshape(image.shape[1:])


def pool_mode(image, stride):  # class of each stride x stride block's majority
    labels = decode(image)
    onehot = torch.nn.functional.one_hot(labels, C).permute(2, 0, 1).float()[None]
    counts = torch.nn.functional.avg_pool2d(onehot, stride)[0]
    return counts.argmax(0), counts.max(0).values


def make_set(tmp_path, n=4):
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for i in range(n):
        coarse = rng.integers(0, C, (H // 16, W // 16))
        lab = np.kron(coarse, np.ones((16, 16), dtype=np.int64))  # blocks, so pooling is exact away from edges
        img = (COLORS[torch.from_numpy(lab)].numpy() * 255).astype(np.uint8)
        write_png(tmp_path / f"img{i}.png", img)
        write_png(tmp_path / f"lab{i}.png", lab.astype(np.uint8))
        rows.append({"key": f"k{i}", "image": str(tmp_path / f"img{i}.png"), "label": str(tmp_path / f"lab{i}.png"),
                     "split": "train", "width": W, "height": H})
        labels.append(torch.from_numpy(lab))
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    base = SegmentationDataset(tmp_path / "manifest.csv", "train", 19, with_labels=False)
    # soft labels at full resolution here, so that any crop, scale or flip error shows sharply
    # (at the network's stride the class boundaries are only known to +-8 pixels)
    with SoftWriter(tmp_path / "soft.h5", base.keys, 19, (H, W)) as w:
        for i, lab in enumerate(labels):
            probs = torch.nn.functional.one_hot(lab, 19).permute(2, 0, 1).float() * 0.9 + 0.1 / 19
            w.write(i, probs / probs.sum(0, keepdim=True))
    with HardWriter(tmp_path / "hard.h5", base.keys, (H, W), num_classes=19, conf_encoding="float16") as w:
        for i, lab in enumerate(labels):
            w.write(i, lab.to(torch.uint8), torch.full((H, W), 0.99))
    return base


def agreement(pseudo, image, stride=4):
    """Share of pure (single-class) stride x stride blocks of ``image`` whose pseudo-label is that class."""
    want, purity = pool_mode(image, stride)
    sure = (purity > 0.99) & (pseudo != 255)
    return (pseudo == want)[sure].float().mean().item(), int(sure.sum())


def test_soft_and_hard_pseudo_labels_follow_the_pixels(tmp_path):
    base = make_set(tmp_path)
    soft = SoftStore(tmp_path / "soft.h5", expect_keys=base.keys)
    hard = HardStore(tmp_path / "hard.h5", expect_keys=base.keys)
    # geometric ops only, so that the strong image's colours still decode to its classes
    strong = StrongView(n_ops=2, magnitude=10, cutout=True, pool=["Rotate", "ShearX", "TranslateX", "TranslateY"])
    views = TargetViews(base, WeakView(base_width=160, crop=(96, 48)), strong, soft_store=soft,
                        hard_store=hard, threshold=0.95, label_stride=4)
    checked_soft = checked_hard = 0
    soft_scores, hard_scores = [], []
    for key in [(i % 4, 1000 + i) for i in range(12)]:
        s = views[key]
        assert s["full"].shape == (3, H, W) and s["weak"].shape == (3, 48, 96)
        assert s["soft"].shape == (19, 12, 24) and s["hard"].shape == (12, 24)
        # soft maps are resampled with the official align_corners=True convention (made for the
        # corner-aligned OS8 grid), which leaves up to ~2 pixels of offset on a full-resolution
        # map: a correct warp scores ~0.94 on average here, a flip in the wrong direction ~0.46
        agree, n = agreement(s["soft"].argmax(0), s["weak"])
        assert agree > 0.75, agree
        soft_scores.append(agree)
        checked_soft += n
        # hard labels go into the weak crop, then into the strong view of that crop
        # (correct: >= 0.94 per sample, 0.98 on average; leaving out the strong warp: 0.59 / 0.73)
        agree, n = agreement(s["hard"], s["strong"])
        assert agree > 0.85, agree
        hard_scores.append(agree)
        checked_hard += n
    assert sum(soft_scores) / len(soft_scores) > 0.88
    assert sum(hard_scores) / len(hard_scores) > 0.93
    assert checked_soft > 500 and checked_hard > 500
