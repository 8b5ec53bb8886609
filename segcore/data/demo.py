"""Synthetic demo datasets in the real on-disk formats of GTA5, SYNTHIA and Cityscapes.

Scenes come from ``demo_scenes`` (geometry only); this module gives each dataset its own
look and its own mix of objects, and writes the files exactly as the real releases lay
them out. The source/target gap is a real domain shift, spelled out in one
``DomainStyle`` and one ``SceneMix`` per dataset:

* palette: every class colour rotated in hue, desaturated and offset per class;
* texture: noise, stripes and window grids of a different period and strength;
* lighting: gamma, contrast, brightness and white balance; sensor noise and blur;
* class frequencies: more cars and trucks in GTA5, more people, bikes and vegetation in
  Cityscapes, pedestrians and high random viewpoints in SYNTHIA.

Shape and position mean the same in every domain, so adaptation has something to
transfer. ``shift`` (0..1+) interpolates every style from the neutral one (0 = no
appearance shift; the class mixes stay). Each image is drawn from its own seed
(dataset seed, dataset key, split, index), so image i never depends on the count.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_json, write_text
from .classes import CITYSCAPES_LABELID_COLORS, CITYSCAPES_LABELID_TO_TRAINID, SYNTHIA_ID_TO_TRAINID19
from .demo_scenes import EGO, LANEMARK, NUM_KINDS, PARKING, STATIC, VOID, K, SceneMix, generate_scene
from .io import write_png, write_png16

COMPLETE = ".demo_complete"  # written last: a dataset without it is unfinished
STARTED = ".demo_started"
CITIES = {"train": ("aachen", "bochum", "bremen"), "val": ("frankfurt", "lindau", "munster")}


@dataclass(frozen=True)
class DomainStyle:
    """How a domain renders a scene. Colours are in 0..255 units."""

    hue_shift: float = 0.0  # degrees; every class colour rotated about the grey axis
    saturation: float = 1.0
    class_jitter: float = 0.0  # std of a fixed per-class colour offset (drawn from jitter_seed)
    jitter_seed: int = 0
    instance_jitter: float = 14.0  # std of the colour variation between shapes
    texture_amp: float = 1.0
    texture_period: float = 1.0  # multiplies every texture period
    brightness: float = 1.0
    contrast: float = 1.0
    gamma: float = 1.0
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)  # white balance
    exposure_jitter: float = 0.06  # per-image brightness std
    blur: float = 0.0  # box-blur radius in pixels per 128 pixels of width
    noise: float = 0.0  # sensor noise std

    def scaled(self, shift: float) -> DomainStyle:
        """This style moved ``shift`` of the way from the neutral style."""
        out = {}
        for f in dataclasses.fields(self):
            mine, base = getattr(self, f.name), getattr(NEUTRAL, f.name)
            if isinstance(mine, tuple):
                out[f.name] = tuple(b + shift * (m - b) for m, b in zip(mine, base))
            elif f.name == "jitter_seed":
                out[f.name] = mine
            else:
                out[f.name] = base + shift * (mine - base)
        return DomainStyle(**out)


NEUTRAL = DomainStyle()
# Source: saturated, warm, crisp, fine high-contrast textures.
GTA5_STYLE = DomainStyle(hue_shift=-5.0, saturation=1.18, class_jitter=6.0, jitter_seed=5, texture_amp=1.2,
                         texture_period=0.8, brightness=1.03, gamma=0.94, gains=(1.05, 1.0, 0.94), noise=1.0)
# Source: flat shading, bright, hue shifted away from Cityscapes (like GTA5, a bit further).
SYNTHIA_STYLE = DomainStyle(hue_shift=-9.0, saturation=1.06, class_jitter=8.0, jitter_seed=7, texture_amp=0.6,
                            texture_period=1.1, brightness=1.09, contrast=0.94, gains=(1.0, 1.02, 1.0), blur=0.2,
                            noise=0.6)
# Target: cooler, greyer, darker, coarse textures, camera blur and noise.
CITYSCAPES_STYLE = DomainStyle(hue_shift=11.0, saturation=0.82, class_jitter=11.0, jitter_seed=11, texture_amp=0.85,
                               texture_period=1.45, brightness=0.93, contrast=0.91, gamma=1.09, gains=(0.95, 1.0, 1.06),
                               blur=0.6, noise=4.0)

GTA5_MIX = SceneMix(cars=5.0, persons=1.0, riders=0.4, trucks=0.6, buses=0.3, trains=0.08, trees=1.0, poles=1.5,
                    p_facade=0.6, p_terrain=0.25, statics=0.4, voids=0.2, p_parking=0.15)
SYNTHIA_MIX = SceneMix(cars=2.5, persons=5.0, riders=1.2, p_motorcycle=0.5, trucks=0.15, buses=0.3, trains=0.05,
                       trees=1.5, poles=2.0, p_terrain=0.15, statics=0.3, voids=0.4, p_parking=0.3,
                       horizon=(0.25, 0.5), cam_height=(1.5, 5.0))
CITYSCAPES_MIX = SceneMix(cars=2.5, persons=3.5, riders=1.0, p_motorcycle=0.25, parked_bicycles=0.8, trucks=0.2,
                          buses=0.2, trains=0.15, trees=2.5, poles=2.0, p_facade=0.6, p_hedge=0.4, p_terrain=0.4,
                          statics=0.8, voids=0.5, p_parking=0.4, ego=True, horizon=(0.38, 0.48))

# Neutral colour of every kind (trainIds 0..18, then VOID, EGO, STATIC, PARKING, LANEMARK).
PALETTE = np.array([
    (95, 90, 100), (175, 165, 170), (150, 115, 90), (195, 185, 150), (150, 105, 60), (115, 120, 135),
    (225, 150, 20), (225, 215, 40), (55, 125, 40), (165, 175, 85), (135, 185, 240), (205, 55, 75),
    (240, 120, 35), (35, 60, 160), (210, 210, 200), (35, 160, 150), (170, 60, 150), (45, 40, 55),
    (150, 25, 35), (110, 110, 100), (30, 30, 35), (125, 100, 75), (130, 110, 130), (240, 240, 235),
], np.float32) / 255
# Texture weight of every kind on the fields: fine noise, blobs, horizontal stripes,
# vertical stripes, window grid, vertical gradient (rows as PALETTE; unlisted = default).
_TEX = np.tile(np.array([0.04, 0.05, 0, 0, 0, 0], np.float32), (NUM_KINDS, 1))
for _name, _w in {"road": (0.1, 0.12, 0, 0, 0, 0), "sidewalk": (0.05, 0.05, 0.07, 0.07, 0, 0),
                  "building": (0.03, 0.1, 0, 0, 0.45, 0), "wall": (0.04, 0.08, 0.12, 0, 0, 0),
                  "fence": (0.03, 0.03, 0, 0.4, 0, 0), "traffic_light": (0.02, 0.02, 0.35, 0, 0, 0),
                  "vegetation": (0.2, 0.25, 0, 0, 0, 0), "terrain": (0.15, 0.15, 0, 0, 0, 0),
                  "sky": (0.01, 0.08, 0, 0, 0, 0.4), "truck": (0.03, 0.03, 0, 0.08, 0, 0),
                  "train": (0.03, 0.03, 0.1, 0, 0, 0)}.items():
    _TEX[K[_name]] = _w

_TO_LABELID = {t: lid for lid, t in CITYSCAPES_LABELID_TO_TRAINID.items()}
_TO_SYNTHIA = {t: sid for sid, t in SYNTHIA_ID_TO_TRAINID19.items()}
# Void kinds: Cityscapes/GTA5 labelIds 0 unlabeled, 1 ego vehicle, 4 static, 9 parking (lane
# marks are road); SYNTHIA ids 0 void, 13 parking-slot, 22 lanemarking.
LABELID_LUT = np.array([_TO_LABELID[k] for k in range(19)] + [0, 1, 4, 9, _TO_LABELID[K["road"]]], np.uint8)
SYNTHIA_LUT = np.array([_TO_SYNTHIA[k] for k in range(19)] + [0, 0, 0, 13, 22], np.uint16)
assert len(LABELID_LUT) == len(SYNTHIA_LUT) == NUM_KINDS
assert (VOID, EGO, STATIC, PARKING, LANEMARK) == tuple(range(19, 24))
_LABELID_PALETTE = [v for i in range(256) for v in CITYSCAPES_LABELID_COLORS.get(i, (0, 0, 0))]
_LABELID_RGB = np.array(_LABELID_PALETTE, np.uint8).reshape(256, 3)


@dataclass(frozen=True)
class Domain:
    style: DomainStyle
    mix: SceneMix
    key: int  # mixed into every image's seed so datasets never share layouts


GTA5 = Domain(GTA5_STYLE, GTA5_MIX, 5)
SYNTHIA = Domain(SYNTHIA_STYLE, SYNTHIA_MIX, 7)
CITYSCAPES = Domain(CITYSCAPES_STYLE, CITYSCAPES_MIX, 11)


def domain_palette(style: DomainStyle) -> np.ndarray:
    """NUM_KINDS x 3 colours (0..1) of a style: hue rotation, saturation, per-class offsets."""
    t = math.radians(style.hue_shift)
    cos, sin, third = math.cos(t), math.sin(t), 1 / 3
    s3 = math.sqrt(third)
    a, b, c = cos + (1 - cos) * third, third * (1 - cos) - s3 * sin, third * (1 - cos) + s3 * sin
    rot = np.array([[a, b, c], [c, a, b], [b, c, a]], np.float32)  # rotation about (1,1,1)
    pal = PALETTE @ rot.T
    lum = pal @ np.array([0.299, 0.587, 0.114], np.float32)
    pal = lum[:, None] + style.saturation * (pal - lum[:, None])
    pal += np.random.default_rng(style.jitter_seed).normal(0, style.class_jitter, pal.shape).astype(np.float32) / 255
    return np.clip(pal, 0.02, 1.0)


def _box_blur(img: np.ndarray, r: int, axes=(0, 1)) -> np.ndarray:
    """Mean over a (2r+1) window along each axis via cumulative sums (cost independent of r)."""
    for ax in axes:
        pad = [(0, 0)] * img.ndim
        pad[ax] = (r + 1, r)
        cs = np.cumsum(np.pad(img, pad, mode="edge"), axis=ax, dtype=np.float32)
        n = img.shape[ax]
        img = (np.take(cs, np.arange(2 * r + 1, n + 2 * r + 1), ax) - np.take(cs, np.arange(n), ax)) / (2 * r + 1)
    return img


def _fields(h: int, w: int, style: DomainStyle, rng) -> list:
    unit = w / 128 * style.texture_period  # periods in pixels scale with the image width
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    cell = max(2, round(5 * unit))
    blob = rng.standard_normal((h // cell + 2, w // cell + 2), dtype=np.float32)
    blob = _box_blur(np.repeat(np.repeat(blob, cell, 0), cell, 1)[:h, :w], cell // 2) * 1.5
    grid = -((np.sin(x * (2 * np.pi / (4 * unit))) > 0.1)
             & (np.sin(y * (2 * np.pi / (5 * unit))) > 0)).astype(np.float32)
    return [rng.standard_normal((h, w), dtype=np.float32), blob, np.sin(y * (2 * np.pi / (3 * unit))),
            np.sin(x * (2 * np.pi / (2.5 * unit))), grid, y / h - 0.5]


def render(scene, style: DomainStyle, rng: np.random.Generator) -> np.ndarray:
    """HxWx3 uint8 image of a scene in a style."""
    kind, shade = scene.kind, scene.shade
    h, w = kind.shape
    tones = np.asarray(scene.tones, np.float32)
    jit = np.asarray(scene.jitters, np.float32) * (style.instance_jitter / 255)
    img = domain_palette(style)[kind] * tones[shade][..., None] + jit[shade]
    mod = np.zeros((h, w), np.float32)
    for weights, field in zip((_TEX * style.texture_amp).T, _fields(h, w, style, rng)):
        mod += weights[kind] * field
    light = 1 + 0.12 * rng.uniform(-1, 1) * (np.arange(w, dtype=np.float32) / w - 0.5)  # sun from one side
    img *= ((1 + mod) * light)[..., None]
    img *= ((style.brightness * (1 + style.exposure_jitter * rng.standard_normal()))
            * np.asarray(style.gains, np.float32))
    img = np.clip((img - 0.5) * style.contrast + 0.5, 0, 1) ** style.gamma
    r = round(style.blur * w / 128)
    if r > 0:
        img = _box_blur(img, r)
    if style.noise > 0:
        img += rng.standard_normal(img.shape, dtype=np.float32) * (style.noise / 255)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def sample(domain: Domain, size, seed: int, index: int, split: int = 0, shift: float = 1.0):
    """(image HxWx3 uint8, kind map HxW uint8, instance map HxW uint16) of one image."""
    w, h = size
    rng = np.random.default_rng([seed, domain.key, split, index])
    scene = generate_scene(w, h, domain.mix, rng, index)
    return render(scene, domain.style.scaled(shift), rng), scene.kind, scene.inst


def _begin(root, patterns) -> Path:
    root = Path(root)
    if root.is_dir() and any(root.iterdir()) and not ((root / COMPLETE).exists() or (root / STARTED).exists()):
        raise FileExistsError(f"{root}: not empty and not a demo dataset; refusing to write into it")
    (root / COMPLETE).unlink(missing_ok=True)
    write_text(root / STARTED, "")
    for pattern in patterns:  # files of an earlier, possibly larger run
        for p in root.glob(pattern):
            p.unlink()
    return root


def _finish(root: Path, **params) -> None:
    write_json(root / COMPLETE, params)
    (root / STARTED).unlink()


def _check(size, *counts) -> tuple[int, int]:
    w, h = (int(v) for v in size)
    if w < 16 or h < 16 or any(int(n) < 0 for n in counts):
        raise ValueError(f"demo size must be at least 16x16 and counts non-negative, got size {size}, counts {counts}")
    return w, h


def make_gta5(root, count: int, size: tuple[int, int] = (160, 88), seed: int = 0, shift: float = 1.0) -> None:
    """GTA5 layout: images/NNNNN.png and labels/NNNNN.png (palette PNG of labelIds), 1-based."""
    size = _check(size, count)
    root = _begin(root, ("images/*.png", "labels/*.png"))
    for i in range(count):
        img, kind, _ = sample(GTA5, size, seed, i, shift=shift)
        write_png(root / "images" / f"{i + 1:05d}.png", img)
        write_png(root / "labels" / f"{i + 1:05d}.png", LABELID_LUT[kind], palette=_LABELID_PALETTE)
    _finish(root, dataset="gta5", count=count, size=list(size), seed=seed, shift=shift)


def make_synthia(root, count: int, size: tuple[int, int] = (128, 76), seed: int = 0, shift: float = 1.0) -> None:
    """SYNTHIA-RAND-CITYSCAPES layout: RGB/NNNNNNN.png and GT/LABELS/NNNNNNN.png (16-bit:
    class id, instance id, 0), 0-based."""
    size = _check(size, count)
    root = _begin(root, ("RGB/*.png", "GT/LABELS/*.png"))
    for i in range(count):
        img, kind, inst = sample(SYNTHIA, size, seed, i, shift=shift)
        write_png(root / "RGB" / f"{i:07d}.png", img)
        label = np.stack([SYNTHIA_LUT[kind], inst, np.zeros_like(inst)], axis=-1).astype(np.uint16)
        write_png16(root / "GT" / "LABELS" / f"{i:07d}.png", label)
    _finish(root, dataset="synthia", count=count, size=list(size), seed=seed, shift=shift)


def make_cityscapes(root, train_count: int, val_count: int, size: tuple[int, int] = (128, 64), seed: int = 0,
                    shift: float = 1.0) -> None:
    """Cityscapes layout: leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png and
    gtFine/{split}/{city}/{stem}_gtFine_{labelIds,color}.png, stem = {city}_{seq:06d}_{frame:06d}."""
    size = _check(size, train_count, val_count)
    root = _begin(root, ("leftImg8bit/*/*/*.png", "gtFine/*/*/*.png"))
    for split_key, (split, count) in enumerate((("train", train_count), ("val", val_count))):
        cities = CITIES[split]
        for i in range(count):
            city = cities[i % len(cities)]
            stem = f"{city}_{i // len(cities):06d}_{19:06d}"
            img, kind, _ = sample(CITYSCAPES, size, seed, i, split=split_key, shift=shift)
            labelids = LABELID_LUT[kind]
            write_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", img)
            write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", labelids)
            write_png(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", _LABELID_RGB[labelids])
    _finish(root, dataset="cityscapes", train_count=train_count, val_count=val_count, size=list(size), seed=seed,
            shift=shift)
