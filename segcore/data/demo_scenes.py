"""Geometry of the synthetic street scenes behind the demo datasets.

A scene is seen by a pinhole camera above a flat ground plane, so every object is placed
in metres (lateral offset ``a``, distance ``z``, height) and gets its size and position in
the image from perspective: the road converges to a vanishing point, near objects are
large and low, a person's head sits near the horizon. The result is a map of *kinds*
(0..18 = trainIds, plus the void kinds below), an instance map and a shade map (which
painted shape a pixel belongs to, so the renderer can vary colour per shape). Colours
and the per-dataset label ids are applied in ``demo.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .classes import CLASSES19

K = {name: i for i, name in enumerate(CLASSES19)}
# Void kinds, labelled differently by each dataset and never trained on.
VOID, EGO, STATIC, PARKING, LANEMARK = 19, 20, 21, 22, 23
NUM_KINDS = 24
# Rare kinds: image i always contains FORCED[i % len(FORCED)], so every run of len(FORCED)
# images has each of them (the common classes appear in nearly every image anyway).
FORCED = ("truck", "bus", "train", "motorcycle", "bicycle", "wall", "fence", "terrain", "rider")


@dataclass(frozen=True)
class SceneMix:
    """How often things appear: Poisson means (counts) or probabilities (p_*)."""

    cars: float = 3.0
    persons: float = 2.0
    riders: float = 0.6
    p_motorcycle: float = 0.4  # share of two-wheelers that are motorcycles
    parked_bicycles: float = 0.3
    trucks: float = 0.3
    buses: float = 0.2
    trains: float = 0.1
    trees: float = 1.5  # per road side
    poles: float = 1.5  # per road side
    p_facade: float = 0.7  # chance a stretch of roadside is a building (else open)
    p_wall: float = 0.3
    p_fence: float = 0.3
    p_hedge: float = 0.2
    p_terrain: float = 0.3  # chance a roadside is grass rather than pavement
    statics: float = 0.5
    voids: float = 0.3
    p_parking: float = 0.2
    ego: bool = False  # ego-vehicle bonnet at the bottom (Cityscapes)
    horizon: tuple[float, float] = (0.40, 0.50)  # fraction of the image height
    cam_height: tuple[float, float] = (1.4, 1.7)  # metres


class Canvas:
    """Painter's-algorithm canvas; every fill touches only the shape's bounding box."""

    def __init__(self, w: int, h: int, rng: np.random.Generator):
        self.w, self.h, self.rng = w, h, rng
        self.kind = np.full((h, w), K["sky"], np.uint8)
        self.inst = np.zeros((h, w), np.uint16)
        self.shade = np.zeros((h, w), np.uint16)
        self.tones = [1.0]  # per shade: brightness factor
        self.jitters = [np.zeros(3)]  # per shade: colour offset direction
        self.instances = 0
        self._x = np.arange(w, dtype=np.float32) + 0.5
        self._y = np.arange(h, dtype=np.float32) + 0.5

    def new_shade(self, tone: float = 1.0, jitter: float = 1.0) -> int:
        self.tones.append(tone)
        self.jitters.append(self.rng.normal(0.0, jitter, 3))
        return len(self.tones) - 1

    def new_instance(self) -> int:
        self.instances += 1
        return self.instances

    def fill(self, kind, box, inside=None, inst=0, shade=0) -> None:
        x0, y0, x1, y1 = box
        c0, c1 = max(int(x0), 0), min(int(math.ceil(x1)), self.w)
        r0, r1 = max(int(y0), 0), min(int(math.ceil(y1)), self.h)
        if c0 >= c1 or r0 >= r1:
            return
        xs, ys = self._x[None, c0:c1], self._y[r0:r1, None]
        m = np.ones((r1 - r0, c1 - c0), bool) if inside is None else np.broadcast_to(inside(xs, ys), (r1 - r0, c1 - c0))
        for arr, val in ((self.kind, kind), (self.inst, inst), (self.shade, shade)):
            arr[r0:r1, c0:c1][m] = val

    # -- shapes (pixel coordinates; thin shapes are widened to one pixel so they never vanish)
    def rect(self, kind, x0, y0, x1, y1, **kw):
        if x1 - x0 < 1:
            x0, x1 = (x0 + x1) / 2 - 0.5, (x0 + x1) / 2 + 0.5
        if y1 - y0 < 1:
            y0, y1 = (y0 + y1) / 2 - 0.5, (y0 + y1) / 2 + 0.5
        self.fill(kind, (x0, y0, x1, y1), None, **kw)

    def ellipse(self, kind, cx, cy, rx, ry, inner=0.0, **kw):
        rx, ry = max(rx, 0.6), max(ry, 0.6)

        def inside(x, y):
            d = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
            return (d <= 1) & (d >= inner**2) if inner else d <= 1

        self.fill(kind, (cx - rx, cy - ry, cx + rx, cy + ry), inside, **kw)

    def polygon(self, kind, pts, **kw):
        """Convex polygon, either orientation."""
        p = np.asarray(pts, np.float64)
        q = np.roll(p, -1, axis=0)
        sign = 1.0 if np.sum(p[:, 0] * q[:, 1] - q[:, 0] * p[:, 1]) >= 0 else -1.0

        def inside(x, y):
            m = True
            for (ax, ay), (bx, by) in zip(p, q):
                m = m & (((bx - ax) * (y - ay) - (by - ay) * (x - ax)) * sign >= 0)
            return m

        self.fill(kind, (*p.min(0), *p.max(0)), inside, **kw)

    def line(self, kind, x0, y0, x1, y1, width, **kw):
        n = np.array([y0 - y1, x1 - x0], np.float64)
        n *= max(width, 1.0) / 2 / max(np.hypot(*n), 1e-6)
        self.polygon(kind, [(x0 + n[0], y0 + n[1]), (x1 + n[0], y1 + n[1]),
                            (x1 - n[0], y1 - n[1]), (x0 - n[0], y0 - n[1])], **kw)


@dataclass
class Camera:
    w: int
    h: int
    horizon: float  # image row of the horizon
    vx: float  # image column of the vanishing point
    height: float  # camera height in metres

    def __post_init__(self):
        self.f = self.w / (2 * math.tan(math.radians(35)))  # 70 degree horizontal field of view
        self.z_min = self.f * self.height / (self.h - self.horizon)  # distance seen at the bottom row

    def x(self, a, z):
        return self.vx + self.f * a / z

    def y(self, z, up=0.0):
        return self.horizon + self.f * (self.height - up) / z

    def px(self, metres, z):
        return self.f * metres / z


def _ground(c: Canvas, cam: Camera, road: float, walk: float, sides, parking) -> None:
    """Road, sidewalks, roadside fill, lane marks and parking bays, per pixel below the horizon."""
    r0 = int(math.ceil(cam.horizon))
    y = c._y[r0:, None] - cam.horizon
    z = np.broadcast_to(cam.f * cam.height / y, (y.shape[0], c.w))
    a = (c._x[None, :] - cam.vx) * z / cam.f
    kind = np.where(a < 0, sides[0], sides[1]).astype(np.uint8)
    kind[np.abs(a) <= road + walk] = K["sidewalk"]
    kind[np.abs(a) <= road] = K["road"]
    dash = (np.abs(a) < 0.12) & ((z % 9.0) < 4.0)  # dashed centre line
    kind[dash & (z < 80)] = LANEMARK
    for side, z0 in parking:
        bay = (np.abs(a) > road - 2.3) & (np.abs(a) <= road) & (np.sign(a) == side) & (z > z0) & (z < z0 + 12)
        kind[bay] = PARKING
    c.kind[r0:] = kind


def _band(c, cam, kind, a, z0, z1, top, bottom=0.0, **kw):
    """Vertical face along the road (facade, wall, fence, hedge): a quad in perspective."""
    c.polygon(kind, [(cam.x(a, z0), cam.y(z0, bottom)), (cam.x(a, z0), cam.y(z0, top)),
                     (cam.x(a, z1), cam.y(z1, top)), (cam.x(a, z1), cam.y(z1, bottom))], **kw)


def _vehicle(c, cam, kind, a, z, width, height, length, tone=1.0):
    """Box seen from behind, with the side facing the camera axis; details share its label."""
    inst, body = c.new_instance(), c.new_shade(tone, 1.5)
    side = c.new_shade(tone * 0.75, 0.3)
    dark = c.new_shade(0.3, 0.2)
    la, ra = a - width / 2, a + width / 2
    edge = la if la > 0 else ra if ra < 0 else None
    if edge is not None:
        _band(c, cam, kind, edge, z, z + length, height, inst=inst, shade=side)
        if kind in (K["bus"], K["train"]):  # row of windows along the side
            _band(c, cam, kind, edge, z + 0.4, z + length - 0.4, height * 0.85, height * 0.5, inst=inst, shade=dark)
    x0, x1, yb, yt = cam.x(la, z), cam.x(ra, z), cam.y(z), cam.y(z, height)
    if kind == K["car"]:  # body plus narrower cabin, rear window, wheels
        ym = cam.y(z, height * 0.55)
        c.rect(kind, x0, ym, x1, yb, inst=inst, shade=body)
        inset = (x1 - x0) * 0.12
        c.polygon(kind, [(x0, ym), (x0 + inset, yt), (x1 - inset, yt), (x1, ym)], inst=inst, shade=body)
        c.polygon(kind, [(x0 + inset * 1.3, ym), (x0 + inset * 1.8, cam.y(z, height * 0.92)),
                         (x1 - inset * 1.8, cam.y(z, height * 0.92)), (x1 - inset * 1.3, ym)], inst=inst, shade=dark)
    else:
        c.rect(kind, x0, yt, x1, yb, inst=inst, shade=body)
        if kind in (K["bus"], K["train"]):
            inset = (x1 - x0) * 0.1
            c.rect(kind, x0 + inset, cam.y(z, height * 0.85), x1 - inset, cam.y(z, height * 0.45),
                   inst=inst, shade=dark)
        if kind == K["train"]:  # pantograph
            xm = (x0 + x1) / 2
            c.line(kind, xm, yt, xm + (x1 - x0) * 0.2, cam.y(z, height * 1.15), cam.px(0.1, z), inst=inst, shade=dark)
        if kind == K["truck"]:  # split line of the rear doors
            c.rect(kind, (x0 + x1) / 2 - cam.px(0.05, z), yt, (x0 + x1) / 2 + cam.px(0.05, z), yb,
                   inst=inst, shade=dark)
    for wa in (la + 0.35, ra - 0.35):
        c.ellipse(kind, cam.x(wa, z), yb - cam.px(0.1, z), cam.px(0.22, z), cam.px(0.3, z), inst=inst, shade=dark)


def _person(c, cam, kind, a, z, up=0.0, seated=False, inst=None):
    inst = inst or c.new_instance()
    cloth, legs, skin = c.new_shade(1.0, 1.5), c.new_shade(0.55, 0.5), c.new_shade(1.2, 0.3)
    tall = 1.75 * (0.9 + 0.2 * c.rng.random())
    x, p = cam.x(a, z), (lambda m: cam.px(m, z))
    if not seated:
        for dx in (-0.09, 0.09):
            c.rect(kind, x + p(dx - 0.06), cam.y(z, up + tall * 0.48), x + p(dx + 0.06), cam.y(z, up),
                   inst=inst, shade=legs)
    else:  # leg down to the pedal
        c.line(kind, x, cam.y(z, up + tall * 0.45), x + p(0.25), cam.y(z, up + 0.05), p(0.14), inst=inst, shade=legs)
    c.ellipse(kind, x, cam.y(z, up + tall * 0.63), p(0.22), p(tall * 0.19), inst=inst, shade=cloth)
    c.ellipse(kind, x, cam.y(z, up + tall * 0.91), p(0.1), p(0.12), inst=inst, shade=skin)


def _two_wheeler(c, cam, kind, a, z, rider: bool):
    """Side view: two wheels and a frame (bicycle) or a body (motorcycle), optional rider."""
    inst, frame, dark = c.new_instance(), c.new_shade(1.0, 1.0), c.new_shade(0.3, 0.2)
    length, r = (2.0, 0.32) if kind == K["motorcycle"] else (1.7, 0.34)
    xa, xb, yw = cam.x(a - length / 2 + r, z), cam.x(a + length / 2 - r, z), cam.y(z, r)
    motor = kind == K["motorcycle"]
    for xw in (xa, xb):
        c.ellipse(kind, xw, yw, cam.px(r, z), cam.px(r, z), inner=0 if motor else 0.75, inst=inst, shade=dark)
    if motor:
        c.ellipse(kind, (xa + xb) / 2, cam.y(z, 0.6), (xb - xa) * 0.45, cam.px(0.25, z), inst=inst, shade=frame)
    else:
        top = cam.y(z, 0.85)
        for x0, y0, x1, y1 in ((xa, yw, (xa + xb) / 2, yw),
                               ((xa + xb) / 2, yw, xa + (xb - xa) * 0.2, top),
                               (xa + (xb - xa) * 0.2, top, xb - (xb - xa) * 0.15, top),
                               (xb - (xb - xa) * 0.15, top, xb, yw)):
            c.line(kind, x0, y0, x1, y1, cam.px(0.06, z), inst=inst, shade=frame)
    if rider:
        _person(c, cam, K["rider"], a - 0.1, z, up=0.35, seated=True)


def _pole(c, cam, a, z, rng):
    x, p, shade = cam.x(a, z), (lambda m: cam.px(m, z)), c.new_shade(1.0, 0.5)
    tall = rng.uniform(4.5, 7.0)
    c.rect(K["pole"], x - p(0.1), cam.y(z, tall), x + p(0.1), cam.y(z), shade=shade)
    what = rng.random()
    if what < 0.45:  # traffic light, on an arm over the road half the time
        lx = x
        if rng.random() < 0.5:
            lx = cam.x(a - np.sign(a) * 2.5, z)
            c.rect(K["pole"], min(x, lx), cam.y(z, tall), max(x, lx), cam.y(z, tall - 0.15), shade=shade)
        c.rect(K["traffic_light"], lx - p(0.2), cam.y(z, tall), lx + p(0.2), cam.y(z, tall - 1.0),
               shade=c.new_shade(1.0, 0.3))
    if what > 0.35:  # sign lower on the same pole
        sy, sr, s = cam.y(z, rng.uniform(2.3, 3.0)), p(0.35), c.new_shade(1.0, 0.6)
        shape = rng.integers(3)
        if shape == 0:
            c.ellipse(K["traffic_sign"], x, sy, sr, sr, shade=s)
        elif shape == 1:
            c.polygon(K["traffic_sign"], [(x - sr, sy + sr * 0.7), (x + sr, sy + sr * 0.7), (x, sy - sr)], shade=s)
        else:
            c.rect(K["traffic_sign"], x - sr, sy - sr * 0.7, x + sr, sy + sr * 0.7, shade=s)


def _tree(c, cam, a, z, rng):
    x, p = cam.x(a, z), (lambda m: cam.px(m, z))
    c.rect(K["vegetation"], x - p(0.15), cam.y(z, 2.8), x + p(0.15), cam.y(z), shade=c.new_shade(0.45, 0.3))
    crown, r = rng.uniform(3.5, 5.5), rng.uniform(1.4, 2.6)
    for _ in range(3):
        dx, dy = rng.normal(0, r * 0.35, 2)
        c.ellipse(K["vegetation"], x + p(dx), cam.y(z, crown + dy), p(r), p(r * 0.9),
                  shade=c.new_shade(rng.uniform(0.8, 1.1), 0.6))


def generate_scene(w: int, h: int, mix: SceneMix, rng: np.random.Generator, index: int = 0) -> Canvas:
    """Draw one scene; ``index`` picks the kind forced into it (see FORCED)."""
    forced = FORCED[index % len(FORCED)]
    c = Canvas(w, h, rng)
    cam = Camera(w, h, h * rng.uniform(*mix.horizon), w * rng.uniform(0.4, 0.6), rng.uniform(*mix.cam_height))
    road, walk = rng.uniform(4.5, 7.5), rng.uniform(2.0, 4.0)
    cnt = lambda mean, name: max(int(rng.poisson(mean)), int(forced == name))  # noqa: E731
    flip = lambda p, name: bool(rng.random() < p) or forced == name  # noqa: E731

    # distant skyline: buildings and tree masses along the horizon
    x = -rng.uniform(0, w * 0.1)
    while x < w:
        zb, bw = rng.uniform(60, 150), rng.uniform(0.05, 0.2) * w
        if rng.random() < mix.p_facade:
            top = cam.y(zb, rng.uniform(10, 45))
            c.rect(K["building"], x, top, x + bw, cam.y(zb), shade=c.new_shade(rng.uniform(0.7, 1.2), 1.0))
        elif rng.random() < 0.6:
            c.ellipse(K["vegetation"], x + bw / 2, cam.y(zb, 4), bw / 2, cam.px(6, zb), shade=c.new_shade(0.9, 0.5))
        x += bw
    terrain = [flip(mix.p_terrain, "terrain") if s == 0 else rng.random() < mix.p_terrain for s in (0, 1)]
    sides = [K["terrain"] if t else K["sidewalk"] for t in terrain]
    parking = [(s, rng.uniform(cam.z_min, 30)) for s in (-1, 1) if rng.random() < mix.p_parking]
    _ground(c, cam, road, walk, sides, parking)

    objects = []  # (distance, draw) painted far to near
    for s in (-1, 1):
        edge = s * (road + walk + rng.uniform(0.5, 4.0))
        z = 1.0
        while z < 160:  # facades in stretches, gaps show the skyline
            length = rng.uniform(8, 30)
            if rng.random() < mix.p_facade:
                _band(c, cam, K["building"], edge, z, z + length, rng.uniform(6, 22),
                      shade=c.new_shade(rng.uniform(0.7, 1.2), 1.0))
            z += length
        low = s * (road + walk - 0.2)
        for name, p, tall in (("wall", mix.p_wall, (1.0, 2.2)), ("fence", mix.p_fence, (1.0, 2.0)),
                              ("vegetation", mix.p_hedge, (0.8, 1.6))):  # the last is a hedge
            if flip(p, name) if s == -1 else rng.random() < p:
                z0 = rng.uniform(cam.z_min, 25)
                _band(c, cam, K[name], low, z0, z0 + rng.uniform(6, 30), rng.uniform(*tall),
                      shade=c.new_shade(1.0, 0.5))
        for _ in range(rng.poisson(mix.trees)):
            a, z = s * (road + walk + rng.uniform(-0.5, 2.5)), _distance(rng, cam)
            objects.append((z, lambda a=a, z=z: _tree(c, cam, a, z, rng)))
        for _ in range(rng.poisson(mix.poles)):
            a, z = s * (road + 0.4), _distance(rng, cam)
            objects.append((z, lambda a=a, z=z: _pole(c, cam, a, z, rng)))

    def on_road(lane_only=False):
        return rng.choice([-1, 1]) * (road * 0.5 if lane_only or rng.random() < 0.6 else road - 1.1)

    for name, mean, size in (("car", mix.cars, (1.8, 1.5, 4.5)), ("truck", mix.trucks, (2.5, 3.4, 8.0)),
                             ("bus", mix.buses, (2.5, 3.2, 12.0)), ("train", mix.trains, (2.7, 3.7, 25.0))):
        for _ in range(cnt(mean, name)):
            a, z = on_road(name != "car") + rng.normal(0, 0.3), _distance(rng, cam, 1.8 if name == "car" else 2.5)
            objects.append((z, lambda n=name, a=a, z=z, s=size: _vehicle(c, cam, K[n], a, z, *s)))
    for _ in range(cnt(mix.persons, "person")):
        a, z = rng.choice([-1, 1]) * (road + rng.uniform(0.3, walk)), _distance(rng, cam)
        objects.append((z, lambda a=a, z=z: _person(c, cam, K["person"], a, z)))
    extra_motor = int(forced == "motorcycle")
    riders = cnt(mix.riders, "rider")
    n_motor = extra_motor + rng.binomial(riders, mix.p_motorcycle)
    riders += extra_motor
    for i in range(riders + cnt(mix.parked_bicycles, "bicycle")):  # ridden first, then parked
        kind = K["motorcycle"] if i < n_motor else K["bicycle"]
        rider = i < riders
        a = on_road() if rider else rng.choice([-1, 1]) * (road + rng.uniform(0.5, walk))
        z = _distance(rng, cam)
        objects.append((z, lambda k=kind, a=a, z=z, r=rider: _two_wheeler(c, cam, k, a, z, r)))
    for kind, mean in ((STATIC, mix.statics), (VOID, mix.voids)):
        for _ in range(rng.poisson(mean)):
            a, z = rng.choice([-1, 1]) * (road + rng.uniform(0.3, walk)), _distance(rng, cam)
            wd, ht = rng.uniform(0.4, 1.2), rng.uniform(0.5, 1.5)
            objects.append((z, lambda k=kind, a=a, z=z, wd=wd, ht=ht: c.rect(
                k, cam.x(a - wd / 2, z), cam.y(z, ht), cam.x(a + wd / 2, z), cam.y(z), shade=c.new_shade(1.0, 1.5))))
    for _, draw in sorted(objects, key=lambda o: -o[0]):
        draw()
    if mix.ego:  # bonnet with a curved edge over the bottom rows
        top = h * rng.uniform(0.07, 0.11)
        c.fill(EGO, (0, h - top, w, h), lambda x, y: y >= h - top * (1 - 0.6 * ((x - w / 2) / (w / 2)) ** 2),
               shade=c.new_shade(1.0, 0.2))
    return c


def _distance(rng, cam, near=1.15):
    """Log-uniform distance from just beyond the bottom row to 60 m."""
    lo = cam.z_min * near
    return float(np.exp(rng.uniform(np.log(lo), np.log(max(60.0, lo * 2)))))
