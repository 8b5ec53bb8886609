"""Adaptive pseudo-label correction (Uni-UVPT's online, ADELE-style rule), working.

The released code designs this step but never runs it (its hook is not registered and its
data pipeline never exposes the full label maps or the crop boxes). Here it is a small state
object the training step calls twice per iteration:

* ``labels_for(index, box, flip)`` (before the forward): first ``relabel`` the images of the
  global batch from their previous crop's prediction, then return the current crop of each
  image's full label map (flipped like the image);
* ``record(index, box, flip, pred, conf, labels)`` (after the step): store each image's
  prediction and confidence on its crop (un-flipped, in full-map coordinates) and its
  per-class intersection / union against the label it was trained on, in a FIFO of the last
  ``queue`` samples; every ``interval`` iterations, once the FIFO is full, append
  ``IoU_c = sum inter_c / sum union_c`` to the per-class curves; after the first epoch, every
  ``interval`` iterations:

  - classes leave the update set U one epoch after they entered it;
  - for each class c outside U, a cubic is fitted to its IoU curve since its last update
    (x = 1..n); with ``r = ||f'(n)| - |f'(1)|| / |f'(1)|``, c enters U when
    ``slope_threshold < r < 1`` (its curve has flattened);
  - the per-class confidence threshold t_c is the ``quantile`` (0.8) of the stored
    confidences of the pixels predicted as c (0 when there is none).

  ``relabel``: for an image seen before, when its previous crop region of the label map holds
  a class of U, its pixels predicted as a class c of U with confidence >= t_c take that class.

State (all tensors, ``state_dict`` / ``load_state_dict``: part of the resume state, so a
killed job resumes with the same corrected labels): the full label maps (uint8), the last
prediction (uint8) / confidence (float16) / box / flip of every image, the FIFO, the curves,
U with entry times, the thresholds.

Data parallel: the step passes the GLOBAL batch (indices, boxes, flips, and the all-gathered
predictions) to both calls on every rank, so every rank applies the same updates and the
state stays identical everywhere (``segcore.train.distributed.all_gather_cat``).

Quantiles are exact on the stored float16 confidences (linear interpolation between order
statistics, NumPy's default), computed from per-class histograms of the float16 codes.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.classes import IGNORE_INDEX

NONE = 255                      # "no prediction stored" / ignore in the uint8 maps
_F16_ONE = int(np.float16(1.0).view(np.uint16))  # codes of float16 values in [0, 1] are 0.._F16_ONE


def _crop(m: torch.Tensor, box, fill: int) -> torch.Tensor:
    """``m[..., y1:y2, x1:x2]`` with ``fill`` where the box leaves the map."""
    y1, y2, x1, x2 = (int(v) for v in box)
    h, w = m.shape[-2:]
    if 0 <= y1 and y2 <= h and 0 <= x1 and x2 <= w:
        return m[..., y1:y2, x1:x2]
    out = m.new_full((*m.shape[:-2], y2 - y1, x2 - x1), fill)
    ph, pw = max(0, min(y2, h) - y1), max(0, min(x2, w) - x1)
    out[..., :ph, :pw] = m[..., y1:y1 + ph, x1:x1 + pw]
    return out


def flattened(curve: np.ndarray, slope_threshold: float) -> bool:
    """The cubic-fit rule on one IoU curve (x = 1..n): True when
    ``slope_threshold < ||f'(n)| - |f'(1)|| / |f'(1)| < 1``. Needs 4 points."""
    n = len(curve)
    if n < 4:
        return False
    x = np.arange(1, n + 1, dtype=np.float64)
    deriv = np.polyder(np.polyfit(x, np.asarray(curve, dtype=np.float64), 3))
    d1, dn = abs(np.polyval(deriv, 1.0)), abs(np.polyval(deriv, float(n)))
    if d1 == 0:
        return False
    r = abs(dn - d1) / d1
    return bool(slope_threshold < r < 1.0)


def class_quantiles(pred: torch.Tensor, conf: torch.Tensor, num_classes: int, q: float) -> torch.Tensor:
    """Per class c, the ``q``-quantile (linear interpolation) of ``conf`` (float16) over the
    pixels with ``pred == c``; 0 for a class without pixels. (C,) float32."""
    keep = pred != NONE
    cls = pred[keep].long()
    code = conf[keep].view(torch.int16).long().clamp(0, _F16_ONE)
    bins = _F16_ONE + 1
    hist = torch.bincount(cls * bins + code, minlength=num_classes * bins).view(num_classes, bins)
    values = torch.arange(bins, dtype=torch.int16).view(torch.float16).double()
    out = torch.zeros(num_classes, dtype=torch.float64)
    cum = hist.cumsum(1)
    for c in range(num_classes):
        n = int(cum[c, -1])
        if n == 0:
            continue
        h = (n - 1) * q
        lo, hi = int(np.floor(h)), int(np.ceil(h))
        v_lo = values[int(torch.searchsorted(cum[c], lo, right=True))]
        v_hi = values[int(torch.searchsorted(cum[c], hi, right=True))]
        out[c] = v_lo + (h - lo) * (v_hi - v_lo)
    return out.float()


class PseudoLabelCorrection:
    def __init__(self, labels: torch.Tensor, crop_hw, num_classes: int, epoch_iters: int, queue: int = 1000,
                 interval: int = 200, slope_threshold: float = 0.95, quantile: float = 0.8, enabled: bool = True):
        if labels.dim() != 3:
            raise ValueError(f"label maps must be (images, H, W), got {tuple(labels.shape)}")
        self.num_classes, self.epoch_iters, self.queue, self.interval = num_classes, int(epoch_iters), queue, interval
        self.slope_threshold, self.quantile, self.enabled = slope_threshold, quantile, enabled
        n = labels.shape[0]
        ch, cw = (int(v) for v in crop_hw)
        self.labels = labels.to(torch.uint8).clone()
        self.pred = torch.full((n, ch, cw), NONE, dtype=torch.uint8)
        self.conf = torch.zeros((n, ch, cw), dtype=torch.float16)
        self.box = torch.zeros((n, 4), dtype=torch.int64)
        self.seen = torch.zeros(n, dtype=torch.bool)
        self.fifo_inter = torch.zeros((queue, num_classes), dtype=torch.int64)
        self.fifo_union = torch.zeros((queue, num_classes), dtype=torch.int64)
        self.fifo_size = torch.zeros((), dtype=torch.int64)
        self.fifo_next = torch.zeros((), dtype=torch.int64)
        self.history = torch.zeros((0, num_classes), dtype=torch.float64)
        self.curve_start = torch.zeros(num_classes, dtype=torch.int64)   # history row where c's curve begins
        self.in_update = torch.zeros(num_classes, dtype=torch.bool)
        self.entered = torch.zeros(num_classes, dtype=torch.int64)
        self.thresholds = torch.zeros(num_classes, dtype=torch.float32)
        self.relabelled = torch.zeros((), dtype=torch.int64)              # pixels changed so far (a log value)

    _STATE = ("labels", "pred", "conf", "box", "seen", "fifo_inter", "fifo_union", "fifo_size", "fifo_next",
              "history", "curve_start", "in_update", "entered", "thresholds", "relabelled")

    def state_dict(self) -> dict:
        return {k: getattr(self, k).clone() for k in self._STATE}

    def load_state_dict(self, state: dict) -> None:
        for k in self._STATE:
            mine, got = getattr(self, k), state[k]
            if k != "history" and tuple(got.shape) != tuple(mine.shape):
                raise ValueError(f"correction state '{k}': shape {tuple(got.shape)}, expected {tuple(mine.shape)}")
            setattr(self, k, got.to(mine.dtype).clone())

    # -- before the forward -------------------------------------------------------------
    def relabel(self, index: torch.Tensor) -> None:
        """Correct the label maps of the images ``index`` from their previous crop's
        prediction (no-op before any class is in the update set)."""
        if not self.enabled or not bool(self.in_update.any()):
            return
        update = self.in_update
        for j in index.tolist():
            if not bool(self.seen[j]):
                continue
            region = _crop(self.labels[j], self.box[j], NONE)
            present = torch.bincount(region.reshape(-1).long(), minlength=256)[: self.num_classes] > 0
            if not bool((present & update).any()):
                continue
            p, q = self.pred[j], self.conf[j]
            valid = p != NONE
            pc = p.long().clamp_max(self.num_classes - 1)
            take = valid & update[pc] & (q.float() >= self.thresholds[pc])
            take &= region != NONE  # never write into the padding outside the image
            changed = take & (region != p)
            if bool(take.any()):
                region = region.clone()
                region[take] = p[take]
                self._paste(j, region)
                self.relabelled += int(changed.sum())

    def _paste(self, j: int, region: torch.Tensor) -> None:
        y1, y2, x1, x2 = (int(v) for v in self.box[j])
        h, w = self.labels.shape[-2:]
        ph, pw = max(0, min(y2, h) - y1), max(0, min(x2, w) - x1)
        self.labels[j, y1:y1 + ph, x1:x1 + pw] = region[:ph, :pw]

    def labels_for(self, index: torch.Tensor, box: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """(B, h, w) long labels of the crops (255 outside the image), flipped where the view is."""
        out = []
        for j, b, f in zip(index.tolist(), box, flip.tolist()):
            lab = _crop(self.labels[j], b, IGNORE_INDEX).long()
            out.append(lab.flip(-1) if f else lab)
        return torch.stack(out)

    # -- after the step -----------------------------------------------------------------
    def record(self, index: torch.Tensor, box: torch.Tensor, flip: torch.Tensor, pred: torch.Tensor,
               conf: torch.Tensor, labels: torch.Tensor, done: int) -> None:
        """Store the global batch's predictions (view orientation, crop size) and their IoU
        statistics; run the curve / update-set / threshold logic when ``done`` (iterations
        completed) is on the interval."""
        if not self.enabled:
            return
        pred, conf, labels = pred.cpu(), conf.cpu(), labels.cpu()
        valid = labels != IGNORE_INDEX
        c = self.num_classes
        for k, (j, f) in enumerate(zip(index.tolist(), flip.tolist())):
            p, y, v = pred[k].long(), labels[k].long(), valid[k]
            inter = torch.bincount(p[v & (p == y)], minlength=c)[:c]
            union = (torch.bincount(p[v], minlength=c)[:c] + torch.bincount(y[v], minlength=c)[:c] - inter)
            slot = int(self.fifo_next)
            self.fifo_inter[slot], self.fifo_union[slot] = inter, union
            self.fifo_next.fill_((slot + 1) % self.queue)
            self.fifo_size.fill_(min(int(self.fifo_size) + 1, self.queue))
            pk, qk = (pred[k].flip(-1), conf[k].flip(-1)) if f else (pred[k], conf[k])
            self.pred[j] = pk.to(torch.uint8)
            self.conf[j] = qk.to(torch.float16)
            self.box[j] = box[k]
            self.seen[j] = True
        if done % self.interval:
            return
        if int(self.fifo_size) == self.queue:
            iou = self.fifo_inter.sum(0).double() / self.fifo_union.sum(0).clamp_min(1).double()
            self.history = torch.cat([self.history, iou[None]])
        if done >= self.epoch_iters:
            self.update_classes(done)
            self.thresholds = class_quantiles(self.pred[self.seen], self.conf[self.seen], c, self.quantile)

    def update_classes(self, done: int) -> None:
        """Expire classes that have been in U for an epoch; add classes whose curve flattened."""
        expired = self.in_update & (done - self.entered >= self.epoch_iters)
        self.in_update &= ~expired
        curves = self.history.numpy()
        for cls in range(self.num_classes):
            if bool(self.in_update[cls]):
                continue
            if flattened(curves[int(self.curve_start[cls]):, cls], self.slope_threshold):
                self.in_update[cls] = True
                self.entered[cls] = done
                self.curve_start[cls] = len(curves)


__all__ = ["PseudoLabelCorrection", "flattened", "class_quantiles"]
