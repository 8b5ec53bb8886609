"""The SAM proposer (``segment_anything``) and a checkpoint loader that reads the architecture
from the file.

* Stuff: ``SamAutomaticMaskGenerator`` with the official default settings (32x32 points, IoU
  threshold 0.88, stability 0.95, box NMS 0.7, no crops), masks painted in the order returned.
* Things: ``SamPredictor`` with one box and positive points per connected component
  (``multimask_output=False``). ``prompts="released"`` (the released code): the component's
  minimum-area rotated rectangle, offset outwards by ``1.25 * area / perimeter``, its axis-aligned
  box; one point in each half of the component's pixels (raster order), the pixel whose 17x17
  neighbourhood has the lowest label entropy. (The released loop reaches the second point only
  for components of odd size; we always take both.) ``prompts="paper"`` (the paper's Algorithm 1):
  the component's box enlarged to 1.5 times its area about its centre, and the component pixel
  nearest its centroid.
* The image encoder runs once per image: the generator and the thing prompts share one predictor
  that keeps the image's embedding (the released code encodes every image twice).

``load_sam(path)`` builds ``segment_anything.modeling.Sam`` with the dimensions the state dict's
shapes give (ViT-H, -L, -B, or any smaller model made of the same classes) and loads it strictly.
"""
from __future__ import annotations

import re
from functools import partial

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from ..models.weights import _torch_load, _unwrap_state_dict
from ..pseudo.store_base import IGNORE

PROMPTS = ("released", "paper")
#: SamAutomaticMaskGenerator's own defaults (the released PSA uses them unchanged)
GENERATOR_DEFAULTS = {"points_per_side": 32, "points_per_batch": 64, "pred_iou_thresh": 0.88,
                      "stability_score_thresh": 0.95, "stability_score_offset": 1.0, "box_nms_thresh": 0.7,
                      "crop_n_layers": 0, "min_mask_region_area": 0}
_DECODER_HEADS = 8  # every released SAM; not visible in the shapes


def _count(sd, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return 1 + max((int(m.group(1)) for k in sd if (m := pat.match(k))), default=-1)


def sam_architecture(sd: dict) -> dict:
    """The constructor arguments a SAM state dict's shapes imply."""
    try:
        proj = sd["image_encoder.patch_embed.proj.weight"]
        embed, patch = int(proj.shape[0]), int(proj.shape[-1])
        grid = int(sd["image_encoder.pos_embed"].shape[1])
        depth = _count(sd, "image_encoder.blocks.")
        rel = [int(sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0]) for i in range(depth)]
        head_dim = int(sd["image_encoder.blocks.0.attn.rel_pos_h"].shape[1])
        windows = {(r + 1) // 2 for r in rel if (r + 1) // 2 != grid}
        arch = {
            "embed_dim": embed, "depth": depth, "num_heads": embed // head_dim, "patch_size": patch,
            "img_size": grid * patch, "global_attn_indexes": [i for i, r in enumerate(rel) if (r + 1) // 2 == grid],
            "window_size": windows.pop() if windows else 0,
            "mlp_ratio": sd["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / embed,
            "out_chans": int(sd["image_encoder.neck.0.weight"].shape[0]),
            "mask_in_chans": int(sd["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
            "decoder_depth": _count(sd, "mask_decoder.transformer.layers."),
            "decoder_mlp_dim": int(sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
            "num_multimask_outputs": int(sd["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
            "iou_head_depth": _count(sd, "mask_decoder.iou_prediction_head.layers."),
            "iou_head_hidden_dim": int(sd["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
        }
    except KeyError as e:
        raise ValueError(f"not a SAM state dict (no {e.args[0]!r})") from None
    if windows:
        raise ValueError("not a SAM state dict (several window sizes)")
    return arch


def build_sam(arch: dict):
    """A randomly initialised ``Sam`` of the given architecture (the package's own classes)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = arch["img_size"] // arch["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=arch["img_size"], patch_size=arch["patch_size"], embed_dim=arch["embed_dim"],
            depth=arch["depth"], num_heads=arch["num_heads"], mlp_ratio=arch["mlp_ratio"],
            out_chans=arch["out_chans"], qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True, window_size=arch["window_size"], global_attn_indexes=arch["global_attn_indexes"]),
        prompt_encoder=PromptEncoder(
            embed_dim=arch["out_chans"], image_embedding_size=(grid, grid),
            input_image_size=(arch["img_size"], arch["img_size"]), mask_in_chans=arch["mask_in_chans"]),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=arch["num_multimask_outputs"],
            transformer=TwoWayTransformer(depth=arch["decoder_depth"], embedding_dim=arch["out_chans"],
                                          mlp_dim=arch["decoder_mlp_dim"], num_heads=_DECODER_HEADS),
            transformer_dim=arch["out_chans"], iou_head_depth=arch["iou_head_depth"],
            iou_head_hidden_dim=arch["iou_head_hidden_dim"]),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def load_sam(path):
    """The SAM model of a checkpoint file (a state dict, as Meta releases them)."""
    sd = _unwrap_state_dict(_torch_load(path), path)
    try:
        sam = build_sam(sam_architecture(sd))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    missing, unexpected = sam.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: SAM state dict does not fit ({len(missing)} missing, e.g. "
                         f"{(missing or ['-'])[0]}; {len(unexpected)} unexpected)")
    return sam


def _keeping_predictor(sam):
    """A ``SamPredictor`` that encodes an image once and keeps the embedding (the automatic
    generator resets it after its grid; the thing prompts reuse it)."""
    from segment_anything import SamPredictor

    class KeepingPredictor(SamPredictor):
        _kept = None

        def set_image(self, image, image_format="RGB"):
            if self.is_image_set and self._kept is not None and self._kept.shape == image.shape \
                    and np.array_equal(self._kept, image):
                return
            super().set_image(image, image_format)
            self._kept = np.array(image)

        def reset_image(self):
            if self._kept is None:  # only SamPredictor's own start-up clears the state
                super().reset_image()

    return KeepingPredictor(sam)


def label_entropy(label: np.ndarray, num_channels: int, window: int = 17) -> np.ndarray:
    """Entropy of the label histogram (classes + ignore) in a ``window`` x ``window`` box."""
    lab = np.where(label == IGNORE, num_channels - 1, label).astype(np.int64)
    ent = np.zeros(label.shape, dtype=np.float64)
    for c in np.unique(lab):
        p = ndimage.uniform_filter((lab == c).astype(np.float64), size=window, mode="constant")
        inside = ndimage.uniform_filter(np.ones(label.shape), size=window, mode="constant")
        p = np.clip(p / np.maximum(inside, 1e-12), 0, 1)
        ent -= np.where(p > 0, p * np.log(np.maximum(p, 1e-12)), 0.0)
    return ent


def min_area_rectangle(points: np.ndarray) -> np.ndarray:
    """Corners [4, 2] of the minimum-area rectangle around ``points`` [N, 2] (rotating calipers)."""
    pts = np.asarray(points, dtype=np.float64)
    try:
        hull = pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):  # collinear or too few points: the axis-aligned box
        lo, hi = pts.min(0), pts.max(0)
        return np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
    best = None
    for i in range(len(hull)):
        e = hull[(i + 1) % len(hull)] - hull[i]
        u = e / np.linalg.norm(e)
        v = np.array([-u[1], u[0]])
        a, b = hull @ u, hull @ v
        area = (a.max() - a.min()) * (b.max() - b.min())
        if best is None or area < best[0]:
            best = (area, u, v, a.min(), a.max(), b.min(), b.max())
    _, u, v, a0, a1, b0, b1 = best
    return np.array([a0 * u + b0 * v, a1 * u + b0 * v, a1 * u + b1 * v, a0 * u + b1 * v])


def released_prompt(component: np.ndarray, entropy: np.ndarray):
    """(box xyxy, points [2, 2] xy) of the released code for one component."""
    ys, xs = np.nonzero(component)
    h, w = component.shape
    # pixel squares, not centres: a one-pixel-wide component still has a positive-area rectangle
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    rect = min_area_rectangle(corners)
    side = np.linalg.norm(rect[1] - rect[0]), np.linalg.norm(rect[2] - rect[1])
    d = side[0] * side[1] * 1.25 / max(2 * (side[0] + side[1]), 1e-12)
    # the axis-aligned box of a convex polygon offset by d (round joins) is its box grown by d
    x0, y0 = rect.min(0) - d
    x1, y1 = rect.max(0) + d
    box = np.array([max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)], dtype=np.float64)
    points = []
    for chunk in np.array_split(np.arange(len(ys)), 2):
        if len(chunk):
            j = chunk[np.argmin(entropy[ys[chunk], xs[chunk]])]
            points.append((xs[j], ys[j]))
    return box, np.asarray(points, dtype=np.float64)


def paper_prompt(component: np.ndarray):
    """(box xyxy, points [1, 2] xy) of the paper's Algorithm 1: 1.5x-area box, centre point."""
    ys, xs = np.nonzero(component)
    h, w = component.shape
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    cx, cy, s = (x0 + x1) / 2, (y0 + y1) / 2, np.sqrt(1.5) / 2
    box = np.array([max(cx - (x1 - x0) * s, 0), max(cy - (y1 - y0) * s, 0),
                    min(cx + (x1 - x0) * s, w), min(cy + (y1 - y0) * s, h)])
    j = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)  # on the component, nearest its centroid
    return box, np.array([[xs[j], ys[j]]], dtype=np.float64)


class SamProposer:
    def __init__(self, sam, generator: dict | None = None, prompts: str = "released", num_classes: int = 19,
                 name: str = "sam"):
        from segment_anything import SamAutomaticMaskGenerator

        if prompts not in PROMPTS:
            raise ValueError(f"unknown SAM prompt rule {prompts!r} (choose from {', '.join(PROMPTS)})")
        self.prompts, self.num_classes, self.name = prompts, int(num_classes), name
        self.predictor = _keeping_predictor(sam)
        self.generator = SamAutomaticMaskGenerator(sam, **(GENERATOR_DEFAULTS | dict(generator or {})))
        self.generator.predictor = self.predictor
        self._image = None
        self._entropy = None

    def set_image(self, image: np.ndarray) -> None:
        self._image = np.ascontiguousarray(image, dtype=np.uint8)
        self._entropy = None
        self.predictor.set_image(self._image)

    def stuff_regions(self) -> list[np.ndarray]:
        with torch.inference_mode():
            masks = self.generator.generate(self._image)
        self.predictor.set_image(self._image)  # with crop layers the generator encoded crops last
        return [m["segmentation"].astype(bool) for m in masks]

    def thing_region(self, component: np.ndarray, label: np.ndarray) -> np.ndarray:
        if self.prompts == "released":
            if self._entropy is None or self._entropy[0] is not label:
                self._entropy = (label, label_entropy(label, self.num_classes + 1))
            box, points = released_prompt(component, self._entropy[1])
        else:
            box, points = paper_prompt(component)
        with torch.inference_mode():
            masks, _, _ = self.predictor.predict(point_coords=points, point_labels=np.ones(len(points)),
                                                 box=box, multimask_output=False)
        return masks[0].astype(bool)
