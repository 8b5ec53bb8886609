"""The weak view of ProDA/CPSL, recording its parameters, and their replay on other maps.

``WeakView`` is the official ``RandomSized(base_width)`` -> ``RandomCrop(crop)`` ->
``RandomHorizontallyFlip(p)`` chain (docs/protocol.md, Pre-processing and views):

1. new width ``w = int(U(scale_range) * base_width)``, ``h = int(w / (W / H))`` (aspect kept);
   the image is resized bilinearly (antialiased, half-pixel centres, like PIL's BILINEAR),
   the label by nearest neighbour (half-pixel centres, like PIL's NEAREST);
2. a crop of ``crop = (W, H)`` pixels at a uniform top-left corner (both ends inclusive);
3. a horizontal flip with probability ``flip_p``.

Its parameters come back as tensors that ``default_collate`` stacks:
``{"size": int64[2] (h, w), "crop": int64[4] (y1, y2, x1, x2), "flip": bool[]}``.
``apply_view`` replays them on any other map defined on the full (pre-view) image grid,
at any resolution (soft pseudo-labels at output stride 8, teacher features, hard labels),
exactly like the official ``full2weak``: resize to ``size / stride`` (bilinear with
``align_corners=True`` as the official code, or nearest), crop ``box / stride``, flip.

``geometry="official"`` instead reproduces the sampling positions of the official
*pseudo-label* path (docs/geometry.md): the loader resizes the label to ``size`` at full
resolution (bilinear ``align_corners=True`` for soft labels, PIL nearest for hard ones), crops
``box``, flips, and the training step then downsamples the crop by ``stride``
(``F.interpolate(scale_factor=1/stride)``: bilinear ``align_corners=True``, or nearest, which
reads the top-left pixel of every ``stride`` x ``stride`` block). We sample those positions in
one step. Teacher features keep the default: it *is* the official ``full2weak`` geometry.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .classes import IGNORE_INDEX

ViewParams = dict[str, Tensor]

#: ``geometry`` of ``apply_view`` / ``warp_to_strong`` / ``TargetViews``: ``"direct"`` (default,
#: one resampling at the label resolution) or ``"official"`` (the official chain's positions).
GEOMETRIES = ("direct", "official")


def check_geometry(geometry: str) -> str:
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    return geometry


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [low, high] (both inclusive, like ``random.randint``)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


class WeakView:
    """RandomSized(base_width) + RandomCrop(crop) + horizontal flip, with recorded parameters.

    ``crop`` is (W, H). Random draws come from ``generator`` when given, else from torch's
    global RNG (seeded per worker by the DataLoader).
    """

    def __init__(self, base_width: int, crop: tuple[int, int], scale_range=(0.5, 1.5), flip_p: float = 0.5):
        self.base_width = int(base_width)
        self.crop = (int(crop[0]), int(crop[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.flip_p = float(flip_p)
        if self.base_width <= 0 or min(self.crop) <= 0 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"bad WeakView settings: base_width={base_width}, crop={crop}, scale_range={scale_range}")

    def __repr__(self) -> str:
        return (f"WeakView(base_width={self.base_width}, crop={self.crop}, scale_range={self.scale_range}, "
                f"flip_p={self.flip_p})")

    def sample(self, height: int, width: int, generator: torch.Generator | None = None) -> ViewParams:
        """Draw the parameters of one view of a ``height`` x ``width`` image."""
        lo, hi = self.scale_range
        u = lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))
        w = max(1, int(u * self.base_width))
        h = max(1, int(w / (width / height)))
        tw, th = self.crop
        # The official RandomCrop resizes (with a broken call) when the scaled image is smaller
        # than the crop; that branch is never reached at the official sizes. We instead place
        # the image at the top/left of the crop and pad (image 0, label 255): the box then
        # extends past the scaled image and ``apply_view`` fills the outside the same way.
        x1 = _randint(0, w - tw, generator) if w >= tw else 0
        y1 = _randint(0, h - th, generator) if h >= th else 0
        flip = float(torch.rand((), generator=generator, dtype=torch.float64)) < self.flip_p
        return {
            "size": torch.tensor([h, w], dtype=torch.int64),
            "crop": torch.tensor([y1, y1 + th, x1, x1 + tw], dtype=torch.int64),
            "flip": torch.tensor(flip),
        }

    def sample_for(self, image: Tensor, label: Tensor | None, generator: torch.Generator | None) -> dict:
        """The view parameters of ``image`` (a subclass may look at ``label``, e.g. to redraw a crop)."""
        return self.sample(image.shape[-2], image.shape[-1], generator)

    def __call__(self, image: Tensor, label: Tensor | None = None, generator: torch.Generator | None = None):
        """image float[3,H,W], label long[H,W] or None -> (image, label, params)."""
        if image.dim() != 3:
            raise ValueError(f"WeakView expects an image of shape [C,H,W], got {tuple(image.shape)}")
        params = self.sample_for(image, label, generator)
        h, w = (int(v) for v in params["size"])
        resized = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
        out = _crop_flip(resized, params, fill=0.0)
        if label is not None:
            label = apply_view(label, params, "nearest")
        return out, label, params


def _crop_flip(x: Tensor, params: ViewParams, fill) -> Tensor:
    """Crop box (padding with ``fill`` outside ``x``) then flip, on one [C,h,w] map."""
    y1, y2, x1, x2 = (int(v) for v in params["crop"])
    h, w = x.shape[-2:]
    if y2 <= h and x2 <= w:
        out = x[..., y1:y2, x1:x2]
    else:
        out = x.new_full((*x.shape[:-2], y2 - y1, x2 - x1), fill)
        ph, pw = max(0, min(y2, h) - y1), max(0, min(x2, w) - x1)
        out[..., :ph, :pw] = x[..., y1:y1 + ph, x1:x1 + pw]
    if bool(params["flip"]):
        out = out.flip(-1)
    return out.contiguous()


def _view_batch(x: Tensor, params: ViewParams, mode: str, fill):
    """``x`` as [N, C, h, w] with the view params of its N samples, the fill of ``mode``, and
    whether the input was batched / had no channel axis (for the caller to undo)."""
    size, crop, flip = params["size"], params["crop"], params["flip"]
    batched = size.dim() == 2
    squeeze_channel = x.dim() == (3 if batched else 2)
    if squeeze_channel:
        x = x.unsqueeze(-3)
    if not batched:
        x, size, crop, flip = x[None], size[None], crop[None], flip.reshape(1)
    if x.dim() != 4 or x.shape[0] != size.shape[0]:
        raise ValueError(f"apply_view: map of shape {tuple(x.shape)} does not match params "
                         f"for {size.shape[0]} sample(s)")
    if fill is None:
        fill = IGNORE_INDEX if mode == "nearest" else 0.0
    return x, size, crop, flip, fill, batched, squeeze_channel


def apply_view(x: Tensor, params: ViewParams, mode: str, stride: int = 1, fill=None,
               geometry: str = "direct") -> Tensor:
    """Warp a map defined on the full (pre-view) image grid exactly as the view warped the image.

    ``x``: [C,H,W] (or [H,W]) with single-sample params, or [N,C,H,W] (or [N,H,W]) with the
    batched params of ``default_collate``. Its resolution is free (H, W need not be the
    image's): it is resized to ``size // stride`` -- ``mode="bilinear"`` with
    ``align_corners=True`` (official; float maps) or ``mode="nearest"`` (half-pixel centres,
    any dtype; what ``WeakView`` does to the label) -- then cropped to ``crop // stride`` and
    flipped. Pixels outside the scaled map (padding) get ``fill``: 255 for "nearest",
    0 for "bilinear" by default. The whole batch is warped in one gather / ``grid_sample``.

    ``geometry="official"`` samples where the official pseudo-label chain samples (resize to
    ``size`` and crop at the map's own resolution scaled to the view, flip, then downsample the
    crop by ``stride``; module docstring and docs/geometry.md). It is meant for pseudo-labels;
    for teacher features the default already is the official ``full2weak``. At ``stride=1``
    the two differ only where PIL's NEAREST rounds an exact tie down (``_pil_nearest_index``).
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    if check_geometry(geometry) == "official":
        return _apply_view_official(x, params, mode, stride, fill)
    x, size, crop, flip, fill, batched, squeeze_channel = _view_batch(x, params, mode, fill)
    n, _, hin, win = x.shape
    dev = x.device
    # the crop size is the same for the whole batch; read it before the params move to the
    # map's device (the params stay on the CPU in the training loops: no host-device sync)
    th = int((crop[0, 1] - crop[0, 0]) // stride)
    tw = int((crop[0, 3] - crop[0, 2]) // stride)
    size, crop, flip = (t.to(dev, non_blocking=True) for t in (size, crop, flip))

    hs = torch.div(size[:, 0], stride, rounding_mode="floor").clamp_min(1)  # official int(h/4)
    ws = torch.div(size[:, 1], stride, rounding_mode="floor").clamp_min(1)
    y1 = torch.div(crop[:, 0], stride, rounding_mode="floor")
    x1 = torch.div(crop[:, 2], stride, rounding_mode="floor")

    # coordinates in the scaled map of every output pixel (flip applied after the crop)
    r = y1[:, None] + torch.arange(th, device=dev)[None]  # [N, th]
    j = torch.arange(tw, device=dev)[None]
    c = x1[:, None] + torch.where(flip[:, None].bool(), tw - 1 - j, j)  # [N, tw]
    valid = (r < hs[:, None])[:, :, None] & (c < ws[:, None])[:, None, :]  # [N, th, tw]

    if mode == "nearest":
        # source index floor((r + 0.5) * H / h), in exact integer arithmetic
        src_r = ((2 * r + 1) * hin).div(2 * hs[:, None], rounding_mode="floor").clamp_(0, hin - 1)
        src_c = ((2 * c + 1) * win).div(2 * ws[:, None], rounding_mode="floor").clamp_(0, win - 1)
        nidx = torch.arange(n, device=dev)[:, None, None]
        out = x[nidx, :, src_r[:, :, None], src_c[:, None, :]].permute(0, 3, 1, 2)  # [N, C, th, tw]
    else:
        if not x.is_floating_point():
            raise ValueError(f"apply_view: mode 'bilinear' needs a float map, got {x.dtype}")
        # align_corners=True resize: scaled pixel r sits at input r * (H-1)/(h-1), i.e. at
        # normalised 2r/(h-1) - 1; clamped at the border, padding is masked below.
        gy = 2.0 * r.to(x.dtype) / (hs[:, None] - 1).clamp_min(1).to(x.dtype) - 1.0
        gx = 2.0 * c.to(x.dtype) / (ws[:, None] - 1).clamp_min(1).to(x.dtype) - 1.0
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # [N, th, tw, 2]
        out = F.grid_sample(x, grid.clamp(-1.0, 1.0), mode="bilinear", padding_mode="border", align_corners=True)
    if dev.type != "cpu" or not bool(valid.all()):  # no bool() of a device tensor (a sync)
        out = out.masked_fill(~valid[:, None], fill)
    out = out.contiguous()
    if not batched:
        out = out[0]
    if squeeze_channel:
        out = out.squeeze(-3)
    return out


def _pil_nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of every output pixel of PIL's NEAREST resize from ``n_in`` to ``n_out``.

    PIL accumulates ``x = a/2 + a + a + ...`` with ``a = n_in / n_out`` in double precision and
    truncates: that is ``floor((k + 0.5) * a)`` except at exact ties, where the rounding of
    the sum can give the index below (about 0.1% of rows and columns).
    """
    a = n_in / n_out
    steps = np.full(n_out, a, dtype=np.float64)
    steps[0] = a * 0.5
    return np.minimum(np.cumsum(steps).astype(np.int64), n_in - 1)  # cumsum adds sequentially


def _pil_table(n_in: int, sizes: Tensor, length: int, dev) -> Tensor:
    """[N, length] PIL NEAREST source indices for resizes of ``n_in`` to each of ``sizes``
    (padded past each size with 0; those positions are masked by the caller)."""
    out = np.zeros((len(sizes), length), dtype=np.int64)
    for b, n_out in enumerate(sizes.tolist()):
        idx = _pil_nearest_index(n_in, int(n_out))
        m = min(length, idx.size)
        out[b, :m] = idx[:m]
    return torch.from_numpy(out).to(dev)


def _apply_view_official(x: Tensor, params: ViewParams, mode: str, stride: int, fill) -> Tensor:
    """``apply_view(..., geometry="official")``: the official loader + training-step chain.

    Output cell (i, j) of the ``crop // stride`` map reads, in the view-resized map of
    ``size = (h, w)`` pixels, crop pixel row ``p = s*i`` (nearest: ``F.interpolate`` nearest at
    ``scale_factor=1/s`` reads ``floor(i*s)``) or ``p = i*(th-1)/(th/s-1)`` (bilinear,
    ``align_corners=True``), and column ``q`` likewise in the flipped crop (so ``tw-1-q`` in the
    crop when flipped); resized pixel ``u = y1 + p`` then reads input row
    ``floor((u+0.5)*H/h)`` (PIL's NEAREST resize, with its rounding at exact ties) or position
    ``u*(H-1)/(h-1)`` (bilinear ``align_corners=True``, whatever intermediate full-resolution
    grid the official code goes through: ``align_corners=True`` resizes compose to one).
    Positions outside the scaled map (the padding of a crop larger than the image, never
    reached at the official sizes) get ``fill``.
    """
    x, size, crop, flip, fill, batched, squeeze_channel = _view_batch(x, params, mode, fill)
    s = int(stride)
    n, _, hin, win = x.shape
    dev = x.device
    thc = int(crop[0, 1] - crop[0, 0])  # crop size at full resolution (the same for the batch)
    twc = int(crop[0, 3] - crop[0, 2])
    th, tw = thc // s, twc // s  # floor(crop * (1/s)), the size F.interpolate gives
    size_cpu = size
    size, crop, flip = (t.to(dev, non_blocking=True) for t in (size, crop, flip))
    h, w = size[:, 0:1], size[:, 1:2]  # [N, 1]
    y1, x1 = crop[:, 0:1], crop[:, 2:3]
    fl = flip.reshape(-1, 1).bool()
    i = torch.arange(th, device=dev)[None]
    j = torch.arange(tw, device=dev)[None]
    if mode == "nearest":
        u = y1 + s * i  # [N, th] rows of the resized map
        q = s * j
        v = x1 + torch.where(fl, twc - 1 - q, q)  # [N, tw]
        valid = (u < h)[:, :, None] & (v < w)[:, None, :]
        tab_r = _pil_table(hin, size_cpu[:, 0], int(size_cpu[:, 0].max()), dev)
        tab_c = _pil_table(win, size_cpu[:, 1], int(size_cpu[:, 1].max()), dev)
        src_r = tab_r.gather(1, u.clamp(max=tab_r.shape[1] - 1))
        src_c = tab_c.gather(1, v.clamp(max=tab_c.shape[1] - 1))
        nidx = torch.arange(n, device=dev)[:, None, None]
        out = x[nidx, :, src_r[:, :, None], src_c[:, None, :]].permute(0, 3, 1, 2)
    else:
        if not x.is_floating_point():
            raise ValueError(f"apply_view: mode 'bilinear' needs a float map, got {x.dtype}")
        f64 = torch.float64
        p = i.to(f64) * ((thc - 1) / (th - 1) if th > 1 else 0.0)
        q = j.to(f64) * ((twc - 1) / (tw - 1) if tw > 1 else 0.0)
        u = y1.to(f64) + p
        v = x1.to(f64) + torch.where(fl, (twc - 1) - q, q)
        hm1, wm1 = (h - 1).clamp_min(1).to(f64), (w - 1).clamp_min(1).to(f64)
        valid = (u <= hm1 + 1e-9)[:, :, None] & (v <= wm1 + 1e-9)[:, None, :]
        gy = (2.0 * u / hm1 - 1.0).to(x.dtype)
        gx = (2.0 * v / wm1 - 1.0).to(x.dtype)
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
        out = F.grid_sample(x, grid.clamp(-1.0, 1.0), mode="bilinear", padding_mode="border", align_corners=True)
    if dev.type != "cpu" or not bool(valid.all()):
        out = out.masked_fill(~valid[:, None], fill)
    out = out.contiguous()
    if not batched:
        out = out[0]
    if squeeze_channel:
        out = out.squeeze(-3)
    return out
