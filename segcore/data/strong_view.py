"""The strong view of ProDA/CPSL (``RandAugmentMC(n=2, m=10)`` + cutout), with exactly matching warps.

``StrongView`` is the official strong augmentation (docs/protocol.md, Pre-processing and views), applied to the
weak crop (a float image in [0, 1]):

1. a horizontal flip with probability ``flip_p``;
2. CPSL only (off by default): a Gaussian blur (sigma 1, like PIL's ``GaussianBlur(1.0)``) with
   probability ``blur_p``, then ``ColorJitter(jitter, jitter, jitter, min(0.5, jitter))`` with
   probability ``jitter_p`` (0.5);
3. ``n_ops`` ops drawn uniformly with replacement from the FixMatch pool ``OPS``, each applied with
   probability 0.5 at magnitude ``v = randint(1, magnitude - 1)`` (the official
   ``np.random.randint(1, m)``, whose high end is exclusive: 1..9 for m=10):

   - AutoContrast, Equalize, Identity;
   - Brightness, Color, Contrast, Sharpness: factor ``v*0.9/10 + 0.05``;
   - Posterize: ``int(v*4/10) + 4`` bits; Solarize: threshold ``256 - int(v*256/10)`` (0..255 scale);
   - Rotate: ``int(v*30/10)`` degrees (counter-clockwise, about the centre, like PIL's ``rotate``);
   - ShearX/ShearY: ``v*0.3/10`` (about the top-left corner, like PIL's affine ``(1, s, 0, 0, 1, 0)``);
   - TranslateX/TranslateY: ``int(v*0.3/10 * size)`` pixels;

   the geometric ops get a random sign, bilinear sampling and a grey ``fill`` outside the image;
4. cutout: a square of side ``min(W, H) // 3``, centred uniformly, filled grey (the official
   ``CutoutAbs``: ``x0 = int(max(0, cx - side/2))``, ``x1 = int(min(W, x0 + side))`` and PIL's
   rectangle, which includes its end pixel, so columns ``x0..min(x1, W-1)``).

Every geometric op (the flip included) is recorded as a 2x3 affine matrix in NORMALISED coordinates
(``[-1, 1]``, ``align_corners=False``: pixel centres at ``(2j+1)/W - 1``), mapping an output point
to the point it samples in the op's input, i.e. the ``theta`` of ``F.affine_grid``. In pixel
coordinates with pixel centres at ``j + 0.5`` this is exactly PIL's convention, and the image ops
are implemented as PIL does them: a point whose source lies outside ``[0, W) x [0, H)`` gets the fill,
the others are sampled bilinearly with clamped neighbours. The cutout box is recorded in
normalised coordinates too. ``warp_to_strong`` replays the matrices (in the order they were
applied, each drawn op as often as it was drawn) and the cutout on any map aligned with the weak
crop, at any resolution; this fixes the official ``label_strong_T`` quirks (replay in a fixed
order, duplicated ops replayed once, TranslateX normalised by the height) by construction.
``warp_to_strong(..., geometry="official")`` keeps those fixes but samples where
``label_strong_T`` samples: translations rounded down to whole map pixels
(``floor(t / scale)``), the cutout box taken as ``[x0 // scale, x1 // scale)``, and one nearest
resampling per op instead of one for their composition (docs/geometry.md).

Parameters (all tensors of fixed shape, so ``default_collate`` stacks them; ``S = n_ops + 1``):

=================  ===============  =========================================================
key                shape / dtype    meaning
=================  ===============  =========================================================
``size``           int64[2]         (H, W) of the image the view was drawn for
``flip``           bool[]           horizontal flip applied first
``affine_steps``   float32[S,2,3]   step 0: the flip (or identity); step k: op k if it was
                                    applied and geometric, else identity (normalised theta)
``affine``         float32[2,3]     their composition ``A_0 @ A_1 @ ... @ A_n`` (output -> input)
``cutout``         float32[4]       box (x0, y0, x1, y1) in normalised coordinates: a pixel
                                    whose centre lies in [x0, x1) x [y0, y1) is cut out
``has_cutout``     bool[]           whether the cutout was applied (else the box is zeros)
``op_id``          int64[n_ops]     index into ``OPS`` of each drawn op, in the order applied
``op_magnitude``   int64[n_ops]     the drawn ``v`` (0 for ops built with ``strong_params``)
``op_value``       float32[n_ops]   the value used: degrees (Rotate), shear factor, translation
                                    as a signed fraction of the size (after the official
                                    rounding to whole pixels), enhancement factor, bits,
                                    threshold (0..255); 0 for the parameter-free ops
``op_applied``     bool[n_ops]      the p=0.5 coin of each op
``blur``           bool[]           CPSL Gaussian blur applied
``jitter``         float32[4]       CPSL ColorJitter factors (brightness, contrast, saturation,
                                    hue); (1, 1, 1, 0) when not applied
``jitter_order``   int64[4]         the order the four jitter functions were applied in
=================  ===============  =========================================================
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .classes import IGNORE_INDEX
from .photometric_ops import apply_photometric, color_jitter, gaussian_blur
from .transforms import check_geometry

ViewParams = dict[str, Tensor]

#: The FixMatch pool of ``RandAugmentMC``, in the official order (``op_id`` indexes it).
OPS = (
    "AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize",
    "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY",
)
OP_INDEX = {name: i for i, name in enumerate(OPS)}
GEOMETRIC_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"})
PHOTOMETRIC_OPS = frozenset(OPS) - GEOMETRIC_OPS
_SIGNED_OPS = GEOMETRIC_OPS
_ENHANCE_OPS = ("Brightness", "Color", "Contrast", "Sharpness")
_PARAMETER_MAX = 10


def _rand(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator, dtype=torch.float64))


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [low, high] (both inclusive, like ``random.randint``)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


# ----------------------------------------------------------------------------------------------
# op values and matrices


def op_value(name: str, v: int, height: int, width: int, negative: bool = False) -> float:
    """The official value of op ``name`` at magnitude ``v`` (``fixmatch_augment_pool``).

    Translations come back as a fraction of the width/height, after the official rounding of
    the offset to whole pixels (``int(v * size)``, towards zero).
    """
    if name in _ENHANCE_OPS:
        return float(v) * 0.9 / _PARAMETER_MAX + 0.05
    if name == "Posterize":
        return float(int(v * 4 / _PARAMETER_MAX) + 4)
    if name == "Solarize":
        return float(256 - int(v * 256 / _PARAMETER_MAX))
    if name == "Rotate":
        a = int(v * 30 / _PARAMETER_MAX)
        return float(-a if negative else a)
    if name in ("ShearX", "ShearY", "TranslateX", "TranslateY"):
        s = float(v) * 0.3 / _PARAMETER_MAX
        s = -s if negative else s
        if name == "TranslateX":
            return int(s * width) / width
        if name == "TranslateY":
            return int(s * height) / height
        return s
    if name in ("AutoContrast", "Equalize", "Identity"):
        return 0.0
    raise ValueError(f"unknown op {name!r}; the pool is {OPS}")


def op_matrix(name: str, value: float, height: int, width: int) -> Tensor:
    """Normalised 2x3 ``theta`` (output point -> input point) of a geometric op on an H x W image.

    Derived from PIL's pixel-space maps (``u = (n + 1) * size / 2``):
    ShearX ``x_in = x + s*y``; ShearY ``y_in = s*x + y`` (about the top-left corner);
    TranslateX ``x_in = x + f*W``; TranslateY ``y_in = y + f*H``;
    Rotate by ``a`` degrees counter-clockwise about the centre; Hflip ``x_in = W - x``.
    Photometric ops give the identity.
    """
    r = height / width
    if name == "ShearX":
        m = [[1.0, value * r, value * r], [0.0, 1.0, 0.0]]
    elif name == "ShearY":
        m = [[1.0, 0.0, 0.0], [value / r, 1.0, value / r]]
    elif name == "TranslateX":
        m = [[1.0, 0.0, 2.0 * value], [0.0, 1.0, 0.0]]
    elif name == "TranslateY":
        m = [[1.0, 0.0, 0.0], [0.0, 1.0, 2.0 * value]]
    elif name == "Rotate":
        t = math.radians(value)
        c, s = math.cos(t), math.sin(t)
        m = [[c, -s * r, 0.0], [s / r, c, 0.0]]
    elif name == "Hflip":
        m = [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    elif name in OPS:
        m = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    else:
        raise ValueError(f"unknown op {name!r}")
    return torch.tensor(m, dtype=torch.float64)


def _compose(steps: Tensor) -> Tensor:
    """[..., S, 2, 3] -> [..., 2, 3]: ``A_0 @ A_1 @ ... @ A_{S-1}`` in homogeneous coordinates."""
    out = steps[..., 0, :, :]
    for k in range(1, steps.shape[-3]):
        out = _mul(out, steps[..., k, :, :])
    return out


def _mul(a: Tensor, b: Tensor) -> Tensor:
    """The affine map ``p -> a(b(p))`` of two maps given as [..., 2, 3]."""
    lin = a[..., :2] @ b[..., :2]
    off = a[..., :2] @ b[..., 2:] + a[..., 2:]
    return torch.cat([lin, off], dim=-1)


def _cutout_box(x0: int, y0: int, x1: int, y1: int, height: int, width: int) -> list[float]:
    """PIL rectangle ``(x0, y0, x1, y1)`` (end pixels included) -> normalised half-open box."""
    xe, ye = min(x1 + 1, width), min(y1 + 1, height)
    return [2.0 * x0 / width - 1.0, 2.0 * y0 / height - 1.0, 2.0 * xe / width - 1.0, 2.0 * ye / height - 1.0]


def strong_params(
    height: int,
    width: int,
    ops: Sequence[tuple[str, float]] = (),
    flip: bool = False,
    cutout: tuple[int, int, int, int] | None = None,
    blur: bool = False,
    jitter: tuple[Sequence[float], Sequence[int]] | None = None,
    n_ops: int | None = None,
    magnitudes: Sequence[int] | None = None,
    applied: Sequence[bool] | None = None,
) -> ViewParams:
    """Build the params of a strong view by hand (what ``StrongView.sample`` draws at random).

    ``ops``: ``(name, value)`` pairs in the order applied; ``value`` as in ``op_value`` (degrees,
    shear, signed translation fraction, factor, bits, threshold). ``n_ops`` pads with unapplied
    Identity slots (default ``len(ops)``). ``cutout``: the official PIL rectangle in pixels of the
    ``height`` x ``width`` image. ``jitter``: ((brightness, contrast, saturation, hue), order).
    ``applied``: the coin of each op (default: all applied); an op not applied warps nothing.
    """
    ops = list(ops)
    n = len(ops) if n_ops is None else int(n_ops)
    if n < len(ops):
        raise ValueError(f"{len(ops)} ops do not fit in n_ops={n}")
    names = [o[0] for o in ops] + ["Identity"] * (n - len(ops))
    values = [float(o[1]) for o in ops] + [0.0] * (n - len(ops))
    applied = [True] * len(ops) if applied is None else [bool(a) for a in applied]
    if len(applied) != len(ops):
        raise ValueError(f"{len(applied)} coins for {len(ops)} ops")
    applied += [False] * (n - len(ops))
    mags = [int(m) for m in (magnitudes or ())]
    mags += [0] * (n - len(mags))
    for name in names:
        if name not in OP_INDEX:
            raise ValueError(f"unknown op {name!r}; the pool is {OPS}")
    steps = [op_matrix("Hflip" if flip else "Identity", 0.0, height, width)]
    steps += [op_matrix(nm, v, height, width) if a else op_matrix("Identity", 0.0, height, width)
              for nm, v, a in zip(names, values, applied)]
    steps_t = torch.stack(steps)  # float64 [S, 2, 3]
    if jitter is None:
        jit, order = [1.0, 1.0, 1.0, 0.0], [0, 1, 2, 3]
    else:
        jit, order = [float(f) for f in jitter[0]], [int(i) for i in jitter[1]]
    return {
        "size": torch.tensor([height, width], dtype=torch.int64),
        "flip": torch.tensor(bool(flip)),
        "affine_steps": steps_t.to(torch.float32),
        "affine": _compose(steps_t).to(torch.float32),
        "cutout": torch.tensor(_cutout_box(*cutout, height, width) if cutout is not None else [0.0] * 4,
                               dtype=torch.float32),
        "has_cutout": torch.tensor(cutout is not None),
        "op_id": torch.tensor([OP_INDEX[nm] for nm in names], dtype=torch.int64),
        "op_magnitude": torch.tensor(mags, dtype=torch.int64),
        "op_value": torch.tensor(values, dtype=torch.float32),
        "op_applied": torch.tensor(applied, dtype=torch.bool),
        "blur": torch.tensor(bool(blur)),
        "jitter": torch.tensor(jit, dtype=torch.float32),
        "jitter_order": torch.tensor(order, dtype=torch.int64),
    }


# ----------------------------------------------------------------------------------------------
# the image side (the photometric ops themselves are in ``photometric_ops``)


def _grid(theta: Tensor, n: int, h: int, w: int) -> Tensor:
    """Sampling grid [N, h, w, 2] of normalised thetas [N, 2, 3] (``align_corners=False``)."""
    return F.affine_grid(theta, [n, 1, h, w], align_corners=False)


def _inside(grid: Tensor) -> Tensor:
    """[N, h, w] bool: the sampled point lies in the input, i.e. in [-1, 1) x [-1, 1) (PIL's rule)."""
    gx, gy = grid[..., 0], grid[..., 1]
    return (gx >= -1.0) & (gx < 1.0) & (gy >= -1.0) & (gy < 1.0)


def _cutout_mask(box: Tensor, has: Tensor, h: int, w: int) -> Tensor:
    """[N, h, w] bool: pixels whose centre lies in the normalised half-open box [N, 4].

    The box edges are taken to pixel units of this map and rounded to 1e-3 pixel, so that a
    pixel centre exactly on an edge is decided the same way whatever the float rounding.
    """
    dev = box.device
    box = box.to(torch.float64)
    ex = torch.round((box[:, 0::2] + 1.0) * (w / 2.0) * 1000.0) / 1000.0  # [N, 2] x0, x1 in pixels
    ey = torch.round((box[:, 1::2] + 1.0) * (h / 2.0) * 1000.0) / 1000.0
    xs = torch.arange(w, device=dev, dtype=torch.float64) + 0.5
    ys = torch.arange(h, device=dev, dtype=torch.float64) + 0.5
    cols = (xs[None] >= ex[:, 0:1]) & (xs[None] < ex[:, 1:2])  # [N, w]
    rows = (ys[None] >= ey[:, 0:1]) & (ys[None] < ey[:, 1:2])  # [N, h]
    return rows[:, :, None] & cols[:, None, :] & has.reshape(-1, 1, 1).bool()


def _fill_tensor(fill, image: Tensor) -> Tensor:
    f = torch.as_tensor(fill, dtype=image.dtype, device=image.device)
    return f.reshape(-1, 1, 1) if f.dim() else f


def _warp_image(image: Tensor, theta: Tensor, fill: Tensor) -> Tensor:
    """One geometric op on a [C, H, W] image: PIL's bilinear affine transform with ``fillcolor``."""
    _, h, w = image.shape
    grid = _grid(theta[None].to(image.dtype), 1, h, w)
    out = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    return torch.where(_inside(grid), out, fill)


def apply_strong(image: Tensor, params: ViewParams, fill=127 / 255) -> Tensor:
    """Replay single-sample strong-view ``params`` on a float [3, H, W] image in [0, 1]."""
    if image.dim() != 3 or not image.is_floating_point():
        raise ValueError(f"apply_strong expects a float image [C,H,W], got {tuple(image.shape)} {image.dtype}")
    fill_t = _fill_tensor(fill, image)
    steps = params["affine_steps"]
    if bool(params["flip"]):
        image = image.flip(-1)  # exact; the same map as steps[0]
    if bool(params["blur"]):
        image = gaussian_blur(image)
    jit = params["jitter"]
    if not bool((jit == torch.tensor([1.0, 1.0, 1.0, 0.0])).all()):
        image = color_jitter(image, jit, params["jitter_order"])
    for k, (op, value, applied) in enumerate(zip(params["op_id"].tolist(), params["op_value"].tolist(),
                                                 params["op_applied"].tolist())):
        if not applied:
            continue
        name = OPS[op]
        if name in GEOMETRIC_OPS:
            image = _warp_image(image, steps[k + 1], fill_t)
        else:
            image = apply_photometric(image, name, value)
    if bool(params["has_cutout"]):
        h, w = image.shape[-2:]
        mask = _cutout_mask(params["cutout"][None], params["has_cutout"].reshape(1), h, w)[0]
        image = torch.where(mask, fill_t, image)
    return image.clamp(0.0, 1.0).contiguous()


class StrongView:
    """``RandAugmentMC(n_ops, magnitude)`` + cutout (+ CPSL blur / colour jitter), with recorded params.

    ``fill`` is the grey of the geometric ops and the cutout (official (127, 127, 127) / 255).
    ``blur_p`` / ``jitter`` are CPSL's extras (0.5 / 0.4 there; off by default); the jitter is
    applied with probability ``jitter_p``. ``pool`` restricts the op pool (names from ``OPS``;
    default: the whole FixMatch pool). Random draws come from ``generator`` when given, else
    from torch's global RNG.
    """

    def __init__(self, n_ops: int = 2, magnitude: int = 10, cutout: bool = True, fill=127 / 255,
                 flip_p: float = 0.5, blur_p: float = 0.0, jitter: float = 0.0, jitter_p: float = 0.5,
                 pool: Sequence[str] | None = None):
        self.n_ops = int(n_ops)
        self.magnitude = int(magnitude)
        self.cutout = bool(cutout)
        self.fill = fill
        self.flip_p = float(flip_p)
        self.blur_p = float(blur_p)
        self.jitter = float(jitter)
        self.jitter_p = float(jitter_p)
        self.pool = tuple(OPS if pool is None else pool)
        if self.n_ops < 0 or not 1 <= self.magnitude <= _PARAMETER_MAX or not self.pool:
            raise ValueError(f"bad StrongView settings: n_ops={n_ops}, magnitude={magnitude}, pool={pool}")
        for name in self.pool:
            if name not in OP_INDEX:
                raise ValueError(f"unknown op {name!r}; the pool is {OPS}")

    def __repr__(self) -> str:
        return (f"StrongView(n_ops={self.n_ops}, magnitude={self.magnitude}, cutout={self.cutout}, "
                f"fill={self.fill}, flip_p={self.flip_p}, blur_p={self.blur_p}, jitter={self.jitter}, "
                f"jitter_p={self.jitter_p}, pool={self.pool})")

    def sample(self, height: int, width: int, generator: torch.Generator | None = None) -> ViewParams:
        """Draw the parameters of one strong view of a ``height`` x ``width`` image."""
        flip = _rand(generator) < self.flip_p
        blur = self.blur_p > 0 and _rand(generator) < self.blur_p
        jitter = None
        if self.jitter > 0 and _rand(generator) < self.jitter_p:
            j = self.jitter
            order = torch.randperm(4, generator=generator).tolist()
            lo = max(0.0, 1.0 - j)
            facs = [lo + (1.0 + j - lo) * _rand(generator) for _ in range(3)]
            hj = min(0.5, j)
            facs.append(-hj + 2.0 * hj * _rand(generator))
            jitter = (facs, order)
        ids = torch.randint(0, len(self.pool), (self.n_ops,), generator=generator).tolist()
        names, values, applied, mags = [], [], [], []
        for i in ids:
            name = self.pool[i]
            v = _randint(1, max(1, self.magnitude - 1), generator)
            on = _rand(generator) < 0.5
            negative = name in _SIGNED_OPS and _rand(generator) < 0.5
            names.append(name)
            values.append(op_value(name, v, height, width, negative))
            applied.append(on)
            mags.append(v)
        box = None
        if self.cutout:
            side = min(width, height) // 3
            cx = _rand(generator) * width
            cy = _rand(generator) * height
            x0 = int(max(0.0, cx - side / 2.0))
            y0 = int(max(0.0, cy - side / 2.0))
            box = (x0, y0, int(min(width, x0 + side)), int(min(height, y0 + side)))
        return strong_params(height, width, list(zip(names, values)), flip=flip, cutout=box, blur=blur,
                             jitter=jitter, magnitudes=mags, applied=applied)

    def apply(self, image: Tensor, params: ViewParams) -> Tensor:
        """Replay ``params`` on a float [3, H, W] image."""
        return apply_strong(image, params, self.fill)

    def __call__(self, image: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, ViewParams]:
        """image float[3,H,W] in [0, 1] -> (strong image float[3,H,W], params)."""
        if image.dim() != 3:
            raise ValueError(f"StrongView expects an image of shape [C,H,W], got {tuple(image.shape)}")
        params = self.sample(image.shape[-2], image.shape[-1], generator)
        return self.apply(image, params), params


# ----------------------------------------------------------------------------------------------
# the map side


def _strong_batch(x: Tensor, params: ViewParams, mode: str):
    """``x`` as [N, C, h, w] with the affine steps and cutout of its N samples (checked against
    ``mode``), and whether the input was batched / had no channel axis (for the caller to undo)."""
    steps, box, has = params["affine_steps"], params["cutout"], params["has_cutout"]
    batched = steps.dim() == 4
    squeeze_channel = x.dim() == (3 if batched else 2)
    if squeeze_channel:
        x = x.unsqueeze(-3)
    if not batched:
        x, steps, box, has = x[None], steps[None], box[None], has.reshape(1)
    if x.dim() != 4 or x.shape[0] != steps.shape[0]:
        raise ValueError(f"warp_to_strong: map of shape {tuple(x.shape)} does not match params for "
                         f"{steps.shape[0]} sample(s)")
    if mode == "bilinear" and not x.is_floating_point():
        raise ValueError(f"warp_to_strong: mode 'bilinear' needs a float map, got {x.dtype}")
    return x, steps, box, has, batched, squeeze_channel


def warp_to_strong(x: Tensor, params: ViewParams, mode: str = "nearest", fill=IGNORE_INDEX,
                   geometry: str = "direct") -> Tensor:
    """Warp maps aligned with the weak crop exactly as the strong view warped the image.

    ``x``: [N, C, h, w] or [N, h, w] with the collated params of N samples, or [C, h, w] / [h, w]
    with single-sample params; any resolution (the params are in normalised coordinates, so a
    1/4-resolution label or an OS8 feature map is warped by the same fractions of its size).
    The flip and the geometric ops are replayed in the order applied (as one composed
    ``grid_sample``), then the cutout. ``mode="nearest"`` works on any dtype (labels); ``"bilinear"``
    needs a float map. Pixels whose source left the image at any step (where the image got the
    grey fill), or that lie in the cutout box, get ``fill``; the caller of a float map can pass a
    sentinel fill and use it as a mask.

    ``geometry="official"`` samples where the official ``label_strong_T`` does (module
    docstring; ``_warp_official``), with its bugs still fixed.
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    if check_geometry(geometry) == "official":
        return _warp_official(x, params, mode, fill)
    x, steps, box, has, batched, squeeze_channel = _strong_batch(x, params, mode)
    n, _, h, w = x.shape
    dev = x.device
    # non_blocking: the params stay on the CPU (pinned by the loader) in the training loops
    steps, box, has = (steps.to(dev, non_blocking=True).to(torch.float64), box.to(dev, non_blocking=True),
                       has.to(dev, non_blocking=True))
    work = x if x.is_floating_point() else x.to(torch.float32)
    gdtype = work.dtype if work.dtype in (torch.float32, torch.float64) else torch.float32

    # the point an output pixel samples in the input of step k is A_k @ ... @ A_last @ p; the image
    # got the fill wherever any of these left the image
    valid = None
    suffix = None
    for k in range(steps.shape[1] - 1, -1, -1):
        suffix = steps[:, k] if suffix is None else _mul(steps[:, k], suffix)
        grid = _grid(suffix.to(gdtype), n, h, w)
        inside = _inside(grid)
        valid = inside if valid is None else valid & inside
    out = F.grid_sample(work.to(gdtype), grid, mode=mode, padding_mode="border", align_corners=False)
    out = out.to(x.dtype) if not x.is_floating_point() else out.to(work.dtype)
    drop = ~valid | _cutout_mask(box, has, h, w)
    out = out.masked_fill(drop[:, None], fill).contiguous()
    if not batched:
        out = out[0]
    if squeeze_channel:
        out = out.squeeze(-3)
    return out


def _official_cutout_px(box: Tensor, has: Tensor, height: int, width: int) -> list:
    """The official ``CutoutAbs`` rectangles (x0, y0, x1, y1) in pixels of the H x W crop, or None.

    The params keep the half-open normalised box ``[x0, min(x1 + 1, W))``; ``x1`` is recovered
    from it, and where the box reaches the border (``x1 + 1 >= W``) from the official rule
    ``x1 = min(W, x0 + side)``, ``side = min(W, H) // 3``.
    """
    side = min(width, height) // 3
    out = []
    for b, on in zip(box.tolist(), has.reshape(-1).tolist()):
        if not on:
            out.append(None)
            continue
        x0, y0 = round((b[0] + 1.0) * width / 2.0), round((b[1] + 1.0) * height / 2.0)
        xe, ye = round((b[2] + 1.0) * width / 2.0), round((b[3] + 1.0) * height / 2.0)
        x1 = xe - 1 if xe < width or x0 + side == width - 1 else width
        y1 = ye - 1 if ye < height or y0 + side == height - 1 else height
        out.append((x0, y0, x1, y1))
    return out


def _warp_official(x: Tensor, params: ViewParams, mode: str, fill) -> Tensor:
    """``warp_to_strong(..., geometry="official")``: ``label_strong_T``'s sampling positions.

    The map is ``1/scale`` of the crop the params were drawn for (``scale = H / h``, 4 for the
    official labels). In the order applied, every drawn op warps the map once, with
    ``affine_grid`` + ``grid_sample`` (``align_corners=False``; a pixel whose nearest source
    lies outside the map gets no source, as the official zero padding), the flip exactly; a
    translation of ``t`` crop pixels moves the map by ``floor(t / scale)`` of its pixels (the
    official ``int(t // scale)``; normalised by the map's width for TranslateX, the official
    code's height there being a bug we keep fixed). Then the official cutout
    ``[y0 // scale, y1 // scale) x [x0 // scale, x1 // scale)`` of the PIL rectangle.
    """
    x, steps, box, has, batched, squeeze_channel = _strong_batch(x, params, mode)
    op_id, op_value, flip, size = params["op_id"], params["op_value"], params["flip"], params["size"]
    if not batched:
        op_id, op_value, flip, size = op_id[None], op_value[None], flip.reshape(1), size[None]
    n, _, h, w = x.shape
    dev = x.device
    big_h, big_w = int(size[0, 0]), int(size[0, 1])
    scale = big_h / h  # the official ``scale`` argument (one for both axes)
    work = x if x.is_floating_point() else x.to(torch.float32)
    gdtype = work.dtype if work.dtype in (torch.float32, torch.float64) else torch.float32
    work = work.to(gdtype)
    valid = torch.ones(n, 1, h, w, dtype=gdtype, device=dev)
    fl = flip.reshape(-1).bool().to(dev)
    if bool(fl.any()):
        m = fl[:, None, None, None]
        work = torch.where(m, work.flip(-1), work)
        valid = torch.where(m, valid.flip(-1), valid)
    steps64 = steps.to(torch.float64)
    eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    for k in range(steps.shape[1] - 1):
        theta = steps64[:, k + 1].clone()  # [N, 2, 3]
        for b in range(n):
            name = OPS[int(op_id[b, k])]
            if name == "TranslateX":
                t = round(float(op_value[b, k]) * big_w)
                theta[b, 0, 2] = 2.0 * math.floor(t / scale) / w
            elif name == "TranslateY":
                t = round(float(op_value[b, k]) * big_h)
                theta[b, 1, 2] = 2.0 * math.floor(t / scale) / h
        moving = ~torch.isclose(theta, eye.expand_as(theta), rtol=0.0, atol=0.0).reshape(n, -1).all(1)
        if not bool(moving.any()):
            continue
        grid = _grid(theta.to(gdtype).to(dev), n, h, w)
        warped = F.grid_sample(work, grid, mode=mode, padding_mode="border", align_corners=False)
        inside = F.grid_sample(valid, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        m = moving.to(dev)[:, None, None, None]
        work = torch.where(m, warped, work)
        valid = torch.where(m, inside, valid)
    drop = valid[:, 0] < 0.5
    for b, rect in enumerate(_official_cutout_px(box, has, big_h, big_w)):
        if rect is not None:
            cx0, cy0, cx1, cy1 = (int(c // scale) for c in rect)
            drop[b, cy0:cy1, cx0:cx1] = True
    out = work.to(x.dtype).masked_fill(drop[:, None], fill).contiguous()
    if not batched:
        out = out[0]
    if squeeze_channel:
        out = out.squeeze(-3)
    return out
