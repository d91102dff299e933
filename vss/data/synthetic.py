"""Synthetic videos for fast end-to-end runs: a panning, textured scene with moving objects.

Each video crops a larger background canvas (sky, wall blocks, grass, a road with
irregular edges) at an offset that moves a few pixels per frame, then draws objects
(car, person, ball, bird) that move at their own speeds, some bouncing off the frame
borders, in depth order. Frames and labels come from the same masks, so labels are
exact. Motion is large enough that copying a key frame's labels a few frames later
is clearly worse than the true labels, which is what video methods must fix.

Every layer (the background canvas, each object) only translates by whole pixels, so the
generator knows the exact flow between any two frames: `ground_truth_flow` reads it back
from the layer maps and positions written beside the frames.

Video effects (`vss.data.video_effects`: faster and varied motion, motion blur, occluders,
flicker, noise, compression) are drawn per video and per frame from generators spawned from
the video's own, so the clean videos are the same with or without them.

The context task (`context=P`) is a diagnostic of temporal models, like the synthetic tasks the
Mamba paper uses to show memory: every object is a disc whose size and motion do not depend on its
class, and its class colour shows in one frame of every P; the other frames show one pattern
shared by all classes. A pixel of an object hidden that way, whose class an earlier frame showed,
is a context pixel (`context/<frame>.png`, 255): a single frame cannot tell its class, so a
per-frame model is at chance there and a model that carries what it saw must do better.

Written in VSPW layout (see `vss.data.datasets.vspw`) with raw label = train id + 1.
"""
import json
import logging
import os
import re
import shutil
import time

import cv2
import numpy as np

from .datasets.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_COLORS
from .flow_io import write_flo
from .video_effects import Camera, resolve_effects

logger = logging.getLogger(__name__)

# Bump when the rendering changes, so that existing folders are not taken as up to date.
GENERATOR = "vss.data.synthetic"
GENERATOR_VERSION = 3
LABEL_OFFSET = 1
SPLITS = ("train", "val")
SPEC_FILE = "spec.json"
MOTION_FILE = "motion.json"
OWN_FILES = (SPEC_FILE, "classes.json", "train.txt", "val.txt")
CONTEXT_DIR = "context"
CONTEXT_PIXEL = 255
# the context task's class colours, and the look every hidden object shares
CONTEXT_COLORS = {"car": (205, 35, 45), "person": (45, 70, 210), "ball": (235, 215, 45), "bird": (150, 60, 200)}
CLOAK_GRAYS = (95, 185)
VIDEO_NAME = re.compile(r"^(train|val)_\d{4}$")
FRAME_DIGITS = 8

RAW = {name: i + LABEL_OFFSET for i, name in enumerate(SYNTHETIC_CLASSES)}


def _wave(rng, n, min_period, max_period, terms=3):
    """A smooth random curve over `n` positions, in [-1, 1]."""
    x = np.arange(n, dtype=np.float64)
    periods = rng.uniform(min_period, max_period, terms)
    phases = rng.uniform(0, 2 * np.pi, terms)
    amps = rng.uniform(0.5, 1.0, terms)
    curve = (amps[:, None] * np.sin(2 * np.pi * x[None] / periods[:, None] + phases[:, None])).sum(0)
    return curve / amps.sum()


def _blobs(rng, h, w, cell):
    """Smooth 2-D noise with features about `cell` pixels wide (unit variance-ish)."""
    coarse = rng.normal(size=(h // cell + 2, w // cell + 2)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def _background(rng, canvas_h, canvas_w, height, width, top):
    """(raw labels, float RGB) of the canvas; `top` is the canvas row of the frames' mean top edge."""
    s = min(height, width) / 120
    ys = np.arange(canvas_h, dtype=np.float64)[:, None]
    xs = np.arange(canvas_w, dtype=np.float64)[None]
    # Per-column jitter makes edges ragged instead of perfectly smooth curves.
    horizon = top + height * (0.32 + 0.05 * _wave(rng, canvas_w, 0.5 * width, 2 * width))
    horizon += rng.integers(-1, 2, canvas_w)
    ground = top + height * (0.48 + 0.04 * _wave(rng, canvas_w, 0.4 * width, 1.5 * width))

    building = np.full(canvas_w, -1)
    roof = horizon.copy()
    x, k = int(rng.uniform(0, 0.3) * width), 0
    while x < canvas_w:
        bw = max(4, int(rng.uniform(0.15, 0.35) * width))
        building[x:x + bw] = k
        roof[x:x + bw] = top + height * rng.uniform(0.06, 0.26)
        x, k = x + bw + max(4, int(rng.uniform(0.1, 0.45) * width)), k + 1

    slope = rng.uniform(-0.1, 0.1) * (xs[0] - canvas_w / 2) / width
    road_top = top + height * (0.66 + 0.05 * _wave(rng, canvas_w, 0.3 * width, width) + slope)
    road_bottom = road_top + height * (0.24 + 0.04 * _wave(rng, canvas_w, 0.3 * width, width))
    lane = (road_top + road_bottom) / 2
    road_top += rng.integers(-1, 2, canvas_w)
    road_bottom += rng.integers(-1, 2, canvas_w)

    is_building = building >= 0
    label = np.full((canvas_h, canvas_w), RAW["grass"], np.uint8)
    label[ys < np.where(is_building, roof, horizon)[None]] = RAW["sky"]
    label[is_building[None] & (ys >= roof[None]) & (ys < ground[None])] = RAW["wall"]
    label[(ys >= road_top[None]) & (ys < road_bottom[None])] = RAW["road"]

    grain = rng.normal(size=(canvas_h, canvas_w, 1)).astype(np.float32)
    low = _blobs(rng, canvas_h, canvas_w, max(4, int(12 * s)))[..., None]
    tone = rng.uniform(-15, 15, 3)

    t = np.clip((ys - top + 0.1 * height) / (0.45 * height), 0, 1)[..., None]
    sky = (1 - t) * np.array([60, 115, 205]) + t * np.array([170, 200, 235]) + 3 * grain
    sky += np.clip(low - 0.4, 0, 1) * (250 - sky) * 0.8  # soft clouds

    mow = 12 * np.sin(2 * np.pi * xs / (9 * s) + 3 * low[..., 0])[..., None]
    grass = np.array([65, 130, 45]) + low * np.array([10, 18, 6]) + 14 * grain + mow * np.array([0.3, 1, 0.2])

    road = np.array([100, 100, 106]) + 9 * grain + 6 * low
    dash_len = max(4, int(10 * s))
    dash = (np.abs(ys - lane[None]) < max(1, 1.2 * s)) & ((xs // dash_len) % 2 == 0)
    road = np.where(dash[..., None], np.array([225, 222, 205]), road)

    palette = np.array([[150, 78, 60], [185, 165, 135], [125, 125, 138], [170, 110, 80]], np.float64)
    # Each wall block gets its own colour: a palette entry plus a random shift.
    shift = rng.uniform(-20, 20, (max(k, 1), 3))
    wall = (palette[building % len(palette)] + shift[building % max(k, 1)])[None]
    brick_h = max(3, int(round(6 * s)))
    brick_w = 2 * brick_h + 2
    row = ys // brick_h
    mortar = (ys % brick_h == 0) | ((xs + (row % 2) * (brick_w // 2)) % brick_w == 0)
    wall = wall * np.where(mortar, 0.6, 1.0)[..., None] + 6 * grain

    layers = {"sky": sky, "grass": grass, "road": road, "wall": wall}
    rgb = np.zeros((canvas_h, canvas_w, 3), np.float32)
    for name, layer in layers.items():
        where = label == RAW[name]
        rgb[where] = np.broadcast_to(layer, (canvas_h, canvas_w, 3))[where] + tone
    return label, rgb


def _ellipse(u, v, rx, ry):
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1


def _rounded_box(u, v, a, b, r):
    qx = np.maximum(np.abs(u) - (a - r), 0)
    qy = np.maximum(np.abs(v) - (b - r), 0)
    return qx**2 + qy**2 <= r**2


def _triangle(u, v, points):
    (x0, y0), (x1, y1), (x2, y2) = points
    d0 = (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0)
    d1 = (x2 - x1) * (v - y1) - (y2 - y1) * (u - x1)
    d2 = (x0 - x2) * (v - y2) - (y0 - y2) * (u - x2)
    return ((d0 >= 0) & (d1 >= 0) & (d2 >= 0)) | ((d0 <= 0) & (d1 <= 0) & (d2 <= 0))


def _person(u, v, a, b):
    return _ellipse(u, v - 0.25 * b, a, 0.75 * b) | _ellipse(u, v + 0.72 * b, 0.7 * a, 0.7 * a)


def _person_texture(rng, v, b, grain):
    shirt = rng.uniform([180, 80, 20], [250, 160, 90])
    tex = np.where((v < 0.15 * b)[..., None], shirt, np.array([35, 45, 95]))
    tex = np.where((v < -0.55 * b)[..., None], np.array([230, 180, 145]), tex)
    return tex + 8 * grain


class _Motion:
    """How objects move: the speed factor, the birds' wing-beat and wobble rate factor (`flap`), and
    with `turns` > 0 sudden turns drawn from `rng`."""

    def __init__(self, speed, turns, rng, flap=1.0):
        self.speed, self.turns, self.rng, self.flap = speed, turns, rng, flap

    def turn(self, vel, speed):
        """A new velocity: turned by up to 115 degrees, its speed redrawn around the object's own."""
        angle = self.rng.uniform(-2, 2)
        c, s = np.cos(angle), np.sin(angle)
        direction = np.array([c * vel[0] - s * vel[1], s * vel[0] + c * vel[1]])
        return direction / max(np.hypot(*direction), 1e-9) * speed * self.rng.uniform(0.5, 1.8)


class _Object:
    """One moving object: a shape in a local (2R+1)^2 patch, its texture there, and a path."""

    def __init__(self, rng, kind, frames, height, width, motion, size=1.0):
        s = min(height, width) / 120
        z = s * size  # object sizes; speeds stay in s
        self.kind, self.raw = kind, RAW[kind]
        self.flap = None
        gravity, wobble = 0.0, 0.0
        if kind == "car":
            self.a, self.b = rng.uniform(16, 24) * z, rng.uniform(8, 11) * z
            extent, speed, vy = self.a, rng.uniform(1, 4) * s, rng.uniform(-0.3, 0.3) * s
            y_range, bounce = (0.5, 0.95), rng.random() < 0.7
        elif kind == "person":
            self.a, self.b = rng.uniform(5, 7) * z, rng.uniform(15, 20) * z
            extent, speed, vy = 1.1 * self.b, rng.uniform(0.5, 2) * s, rng.uniform(-0.5, 0.5) * s
            y_range, bounce = (0.45, 0.9), rng.random() < 0.7
        elif kind == "ball":
            self.a = self.b = rng.uniform(7, 11) * z
            extent, speed, vy = self.a, rng.uniform(1, 3) * s, rng.uniform(-3, 0) * s
            y_range, bounce, gravity = (0.0, 1.0), True, 0.4 * s
        else:  # bird: two flapping wing triangles around a small body
            self.a, self.b = rng.uniform(14, 20) * z, rng.uniform(7, 10) * z
            extent, speed, vy = self.a, rng.uniform(2, 4.5) * s, rng.uniform(-1, 1) * s
            y_range, bounce, wobble = (0.1, 0.5), rng.random() < 0.5, rng.uniform(2, 6) * s
            self.flap = (rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 0.9) * motion.flap)
        self.radius = int(np.ceil(extent)) + 1
        self.half = (self.radius, self.radius)
        r = np.arange(-self.radius, self.radius + 1, dtype=np.float64)
        self.u, self.v = r[None], r[:, None]
        self.texture = self._texture(rng)
        factor = motion.speed
        self.path = self._path(rng, frames, height, width, speed * factor, vy * factor, y_range,
                               bounce or motion.turns > 0, gravity * factor**2, wobble, motion)

    def look(self, when):
        """The texture drawn at time `when`."""
        return self.texture

    def _texture(self, rng):
        u, v, a, b = self.u, self.v, self.a, self.b
        n = 2 * self.radius + 1
        grain = rng.normal(size=(n, n, 1))
        if self.kind == "car":
            body = np.array([rng.uniform(150, 225), rng.uniform(10, 50), rng.uniform(20, 60)])
            tex = np.broadcast_to(body, (n, n, 3)) * (1 - 0.25 * np.clip(v / b, -1, 1))[..., None]
            glass = _rounded_box(u, v + 0.55 * b, 0.45 * a, 0.3 * b, 0.2 * b)
            wheels = _ellipse(np.abs(u) - 0.6 * a, v - 0.75 * b, 0.25 * b, 0.25 * b)
            tex = np.where(glass[..., None], np.array([150, 180, 200]), tex)
            tex = np.where(wheels[..., None], np.array([25, 25, 25]), tex)
            return tex + 5 * grain
        if self.kind == "person":
            return _person_texture(rng, v, b, grain)
        if self.kind == "ball":
            base = np.array([245, 225, 60])
            angle = rng.uniform(0, np.pi)
            cu, cv = np.cos(angle) * u + np.sin(angle) * v, -np.sin(angle) * u + np.cos(angle) * v
            spots = np.sin(2 * np.pi * cu / a) * np.sin(2 * np.pi * cv / a) > 0.5
            shade = 1 - 0.35 * np.clip((u + v) / (2 * a), -1, 1)
            return np.where(spots[..., None], np.array([30, 30, 30]), base * shade[..., None]) + 5 * grain
        feathers = np.array([rng.uniform(40, 80), rng.uniform(25, 50), rng.uniform(15, 35)])
        return feathers + 18 * grain + 15 * np.sin(u / 1.5)[..., None]

    def _path(self, rng, frames, height, width, speed, vy, y_range, bounce, gravity, wobble, motion):
        """Integer centre per frame; bouncing objects reflect at the frame (or their band's) border."""
        lo = np.array([0.0, y_range[0] * height + 0.5 * self.b])
        hi = np.array([width - 1.0, y_range[1] * height - 0.5 * self.b])
        pos = rng.uniform(lo, hi)
        vel = np.array([speed * rng.choice([-1, 1]), vy])
        phase = rng.uniform(0, 2 * np.pi)
        path = []
        for t in range(frames):
            dy = wobble * np.sin(0.5 * motion.flap * t + phase)
            path.append((int(round(pos[0])), int(round(pos[1] + dy))))
            vel[1] += gravity
            if motion.turns and motion.rng.random() < 0.15 * motion.turns:
                vel = motion.turn(vel, speed)
            pos = pos + vel
            if bounce:
                below, above = pos < lo, pos > hi
                pos = np.where(below, 2 * lo - pos, np.where(above, 2 * hi - pos, pos))
                vel = np.where(below | above, -vel, vel)
        return path

    def mask(self, t):
        u, v, a, b = self.u, self.v, self.a, self.b
        if self.kind == "car":
            body = _rounded_box(u, v - 0.35 * b, a, 0.65 * b, 0.4 * b)
            cabin = _rounded_box(u, v + 0.55 * b, 0.55 * a, 0.45 * b, 0.35 * b)
            return body | cabin | _ellipse(np.abs(u) - 0.6 * a, v - 0.75 * b, 0.25 * b, 0.25 * b)
        if self.kind == "person":
            return _person(u, v, a, b)
        if self.kind == "ball":
            return _ellipse(u, v, a, a)
        phase, rate = self.flap
        tip = -b * np.cos(phase + rate * t)
        wing = _triangle(np.abs(u), v, [(a, tip), (0.1 * a, -0.25 * b), (0.1 * a, 0.35 * b)])
        return wing | _ellipse(u, v, 0.4 * a, 0.3 * b)


class _Cloaked(_Object):
    """An object of the context task: a disc of a class-independent size and motion that shows its
    class colour in one frame of every `period` (at a phase of its own) and the shared cloak pattern
    in the others."""

    def __init__(self, rng, kind, frames, height, width, motion, period, size=1.0):
        s = min(height, width) / 120
        self.kind, self.raw, self.flap = kind, RAW[kind], None
        self.a = self.b = rng.uniform(10, 15) * s * size
        self.radius = int(np.ceil(self.a)) + 1
        self.half = (self.radius, self.radius)
        r = np.arange(-self.radius, self.radius + 1, dtype=np.float64)
        self.u, self.v = r[None], r[:, None]
        n = 2 * self.radius + 1
        grain = rng.normal(size=(n, n, 1))
        shade = (1 - 0.3 * np.clip((self.u + self.v) / (2 * self.a), -1, 1))[..., None]
        self.texture = np.array(CONTEXT_COLORS[kind], np.float64) * shade + 6 * grain
        cell = max(2, int(round(4 * s)))
        checks = ((self.u // cell + self.v // cell) % 2).astype(int)
        self.cloak = np.array(CLOAK_GRAYS, np.float64)[checks][..., None] * shade + 6 * grain
        self.shown = (np.arange(frames) + rng.integers(period)) % period == 0
        speed, vy = rng.uniform(0.5, 2.5) * s * motion.speed, rng.uniform(-0.7, 0.7) * s * motion.speed
        self.path = self._path(rng, frames, height, width, speed, vy, (0.05, 0.95), True, 0.0, 0.0, motion)

    def look(self, when):
        t = min(max(int(round(when)), 0), len(self.shown) - 1)  # a motion-blur sample may fall past the ends
        return self.texture if self.shown[t] else self.cloak

    def mask(self, t):
        return _ellipse(self.u, self.v, self.a, self.a)

    def context(self, t):
        """Whether frame `t` hides the class that an earlier frame showed."""
        return not self.shown[t] and bool(self.shown[:t].any())


class _Occluder:
    """A pillar (class wall) or a person close to the camera, sweeping across the frame in a few frames.

    About one pillar in two is wider than the frame: it hides the whole view briefly.
    """

    def __init__(self, rng, frames, height, width):
        s = min(height, width) / 120
        self.kind = "wall" if rng.random() < 0.6 else "person"
        self.raw = RAW[self.kind]
        if self.kind == "wall":
            a = width * (rng.uniform(0.6, 0.75) if rng.random() < 0.5 else rng.uniform(0.08, 0.22))
            b, cy = height / 2 + 2, (height - 1) // 2
            half = (int(np.ceil(b)) + 1, int(np.ceil(a)) + 1)
        else:
            b = height * rng.uniform(0.55, 0.75)
            a, cy = b * rng.uniform(0.3, 0.4), int(height * rng.uniform(0.55, 0.8))
            half = (int(np.ceil(1.1 * b)) + 1, int(np.ceil(a)) + 1)
        self.half = half
        u = np.arange(-half[1], half[1] + 1, dtype=np.float64)[None]
        v = np.arange(-half[0], half[0] + 1, dtype=np.float64)[:, None]
        grain = rng.normal(size=(2 * half[0] + 1, 2 * half[1] + 1, 1))
        if self.kind == "wall":
            self.shape = _rounded_box(u, v, a, b, min(a, 3 * s))
            concrete = rng.uniform(80, 170) * np.array([1, rng.uniform(0.9, 1.05), rng.uniform(0.85, 1.1)])
            shade = 1 - 0.35 * (u / a) ** 2  # a round pillar, lit from the front
            seams = np.where(v % max(6, int(14 * s)) < 1, 0.7, 1.0)
            self.texture = (concrete * (shade * seams)[..., None]) + 8 * grain
        else:
            self.shape = _person(u, v, a, b)
            self.texture = _person_texture(rng, v, b, grain)
        # Enters fully outside one side and leaves fully outside the other within 3 to 8 frames.
        span = width + 2 * half[1]
        velocity = span / rng.uniform(3, 8) * rng.choice([-1, 1])
        middle = rng.uniform(-0.5, frames - 0.5)
        self.path = [(int(round((width - 1) / 2 + velocity * (t - middle))), cy) for t in range(frames)]

    def mask(self, when):
        return self.shape

    def look(self, when):
        return self.texture


def _paste(image, label, layer, obj, centre, when, index):
    """Draw `obj` centred at `centre` (x, y) at `when` over the frame, its label and the layer map."""
    cx, cy = centre
    (ry, rx), (h, w) = obj.half, label.shape
    y0, x0 = cy - ry, cx - rx
    fy0, fy1 = max(y0, 0), min(y0 + 2 * ry + 1, h)
    fx0, fx1 = max(x0, 0), min(x0 + 2 * rx + 1, w)
    if fy0 >= fy1 or fx0 >= fx1:
        return
    local = (slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0))
    m = obj.mask(when)[local]
    image[fy0:fy1, fx0:fx1][m] = obj.look(when)[local][m]
    label[fy0:fy1, fx0:fx1][m] = obj.raw
    layer[fy0:fy1, fx0:fx1][m] = index


def _track_at(track, when):
    """Whole-pixel position on a per-frame track at a fractional `when` (linear between frames)."""
    last = len(track) - 1
    when = min(max(when, 0), last)
    i = int(np.floor(when))
    frac = when - i
    return np.rint((1 - frac) * track[i] + frac * track[min(i + 1, last)]).astype(int)


def _render(canvas, canvas_labels, positions, layers, when, height, width):
    """(image, raw label, layer map) of the scene at `when`; layer 0 is the canvas, positions (L, F, 2)."""
    ox, oy = -_track_at(positions[0], when)
    image = canvas[oy:oy + height, ox:ox + width].copy()
    label = canvas_labels[oy:oy + height, ox:ox + width].copy()
    layer = np.zeros((height, width), np.uint8)
    for index, obj in enumerate(layers, 1):
        _paste(image, label, layer, obj, _track_at(positions[index], when), when, index)
    return image, label, layer


def _exposed(canvas, canvas_labels, positions, layers, t, exposure, visible, height, width):
    """The frame at `t` integrated over an exposure centred on it (motion blur), float RGB."""
    near = positions[visible][:, [max(t - 1, 0), t, min(t + 1, positions.shape[1] - 1)]]
    travel = exposure * np.abs(np.diff(near, axis=1)).max(initial=0)
    samples = int(min(16, np.ceil(travel))) + 1  # about one sample per pixel of travel
    times = t + exposure * (np.linspace(0, 1, samples) - 0.5)
    return np.mean([_render(canvas, canvas_labels, positions, layers, when, height, width)[0]
                    for when in times], axis=0)


def render_video(rng, frames, height, width, effects=None, context=0):
    """Render one video from `rng` (a numpy Generator) with `effects` (a preset name or strength
    dict, see `vss.data.video_effects`; None = clean), as the context task with period `context`
    if > 0 (module doc).

    Returns {"images": uint8 (F, H, W, 3) RGB, "labels": uint8 (F, H, W) raw values
    (train id + 1), "pan": int (F, 2) canvas (row, col) offset of each frame,
    "canvas_labels": uint8 raw labels of the whole background canvas, "layers": uint8
    (F, H, W) index of the layer seen at each pixel (0 = background, then the objects far
    to near, occluders nearest), "positions": int (L, F, 2) (x, y) where each layer's origin is
    in each frame, "layer_classes": the class name of each layer ("background" for layer 0),
    "quality": int (F,) the JPEG quality each frame is to be written with, "context": bool
    (F, H, W) the context pixels (all False without the context task)}.

    Every layer only translates by whole pixels, so a pixel of layer i at p in frame t shows
    the same surface point as p + positions[i, k] - positions[i, t] in frame k. The effects
    draw from generators spawned from `rng`, so the clean draws (and frames) never change and
    each effect's draws do not depend on the other effects' strengths.
    """
    effects = resolve_effects(effects)
    motion_rng, occluder_rng, blur_rng, camera_rng = rng.spawn(4)
    s = min(height, width) / 120
    pan_speed = np.array([rng.uniform(-0.6, 0.6), rng.uniform(0.5, 2.5) * rng.choice([-1, 1])]) * s
    track = pan_speed * effects["speed"] * np.arange(frames)[:, None]
    if effects["turns"]:
        track = track + motion_rng.normal(0, effects["turns"] * s, (frames, 2))  # camera shake
    start = np.ceil(np.maximum(-track.min(0), 0)).astype(int)
    extent = np.ceil(track.max(0) + start).astype(int)
    pan = np.clip(np.rint(start + track), 0, extent).astype(int)
    canvas_labels, canvas = _background(rng, height + extent[0], width + extent[1], height, width,
                                        top=extent[0] / 2)

    kinds = ["car", "person", "ball", "bird"]
    kinds += list(rng.choice(kinds, size=rng.integers(0, 3)))
    motion = _Motion(effects["speed"], effects["turns"], motion_rng, effects["flap"])
    if context:
        objects = [_Cloaked(rng, kind, frames, height, width, motion, context, effects["object_size"])
                   for kind in kinds]
    else:
        objects = [_Object(rng, kind, frames, height, width, motion, effects["object_size"]) for kind in kinds]
    depth_order = [objects[i] for i in rng.permutation(len(objects))]  # far to near
    gain = rng.uniform(0.85, 1.15)
    passes = occluder_rng.poisson(effects["occlusions"] * frames / 20)
    layers = depth_order + [_Occluder(occluder_rng, frames, height, width) for _ in range(passes)]
    if len(layers) > 255:
        raise ValueError(f"synthetic video: {len(layers)} object layers do not fit the uint8 layer maps; "
                         "lower occlusions or frames")
    positions = np.stack([-pan[:, ::-1]] + [np.array(obj.path) for obj in layers])
    camera = Camera(effects, camera_rng)

    images = np.empty((frames, height, width, 3), np.uint8)
    labels = np.empty((frames, height, width), np.uint8)
    layer_maps = np.empty((frames, height, width), np.uint8)
    quality = np.empty(frames, int)
    hidden = np.zeros((frames, height, width), bool)
    for t in range(frames):
        image, labels[t], layer_maps[t] = _render(canvas, canvas_labels, positions, layers, t, height, width)
        if context:
            needs = [i for i, obj in enumerate(layers, 1) if isinstance(obj, _Cloaked) and obj.context(t)]
            hidden[t] = np.isin(layer_maps[t], needs)
        if effects["motion_blur"]:
            exposure = effects["motion_blur"] * blur_rng.uniform(0.5, 1)
            visible = np.unique(layer_maps[t])
            image = _exposed(canvas, canvas_labels, positions, layers, t, exposure, visible, height, width)
        image = image * gain + rng.normal(0, 2.0, image.shape)  # sensor noise differs per frame
        image, quality[t] = camera.expose(image)
        images[t] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return {"images": images, "labels": labels, "pan": pan, "canvas_labels": canvas_labels,
            "layers": layer_maps, "positions": positions, "quality": quality, "context": hidden,
            "layer_classes": ["background"] + [str(obj.kind) for obj in layers]}


def layered_flow(positions, layers_frame, layers_key, frame, key_frame):
    """Exact backward flow of a scene of translating layers: (flow (H, W, 2) float32, valid (H, W)).

    `positions` (L, F, 2) holds the (x, y) of each layer's origin in each frame, `layers_frame`
    and `layers_key` the layer index seen at each pixel of frames `frame` and `key_frame`.
    Pixel p of `frame` shows its layer's surface point at p + flow(p) in `key_frame` (channel 0
    = dx); valid is False where that point is outside `key_frame` or hidden there by another layer.
    """
    positions = np.asarray(positions)
    shift = positions[:, key_frame] - positions[:, frame]
    flow = shift[layers_frame]
    h, w = layers_frame.shape
    ys, xs = np.mgrid[:h, :w]
    qx, qy = xs + flow[..., 0], ys + flow[..., 1]
    valid = (qx >= 0) & (qx < w) & (qy >= 0) & (qy < h)
    valid[valid] = layers_key[qy[valid], qx[valid]] == layers_frame[valid]
    return flow.astype(np.float32), valid


def video_ids(spec):
    """{split: [video id, ...]} of a generation spec; names are `<split>_<index:04d>`."""
    return {split: [f"{split}_{i:04d}" for i in range(spec[f"{split}_videos"])] for split in SPLITS}


def _make_spec(train_videos, val_videos, frames, height, width, seed, effects, flow_files, context):
    spec = {"generator": GENERATOR, "version": GENERATOR_VERSION, "seed": seed,
            "train_videos": train_videos, "val_videos": val_videos, "frames": frames,
            "height": height, "width": width, "classes": list(SYNTHETIC_CLASSES),
            "effects": resolve_effects(effects), "flow_files": bool(flow_files)}
    minimum = {"train_videos": 1, "val_videos": 1, "frames": 1, "height": 32, "width": 32, "seed": 0}
    if context:
        # only then in the spec, so that the sets written before the context task stay up to date
        spec["context"] = context
        minimum["context"] = 2
    for key, low in minimum.items():
        value = spec[key]
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"synthetic dataset: {key} must be an integer >= {low}, got {value!r}")
        spec[key] = int(value)
    if spec["train_videos"] > 9999 or spec["val_videos"] > 9999:
        raise ValueError("synthetic dataset: at most 9999 videos per split")
    return spec


def _read_spec(root):
    path = os.path.join(root, SPEC_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); pass overwrite=True to regenerate") from None


def _clear(root):
    """Delete a previous generation, refusing if `root` holds anything the generator did not write."""
    data = os.path.join(root, "data")
    foreign = [n for n in sorted(os.listdir(root)) if n not in OWN_FILES + ("data",)]
    if os.path.isdir(data):
        foreign += [f"data/{n}" for n in sorted(os.listdir(data)) if not VIDEO_NAME.match(n)]
    if foreign:
        raise FileExistsError(f"refusing to overwrite {root}: it holds files the synthetic generator "
                              f"did not write: {foreign[:5]}")
    if os.path.isdir(data):
        shutil.rmtree(data)
    for name in OWN_FILES:
        if os.path.exists(os.path.join(root, name)):
            os.remove(os.path.join(root, name))


def _summary(root, spec, generated):
    ids = video_ids(spec)
    return {"root": root, "generated": generated, "spec": spec, "videos": ids,
            "frames": spec["frames"] * sum(len(v) for v in ids.values())}


def generate(root, *, train_videos=8, val_videos=4, frames=20, height=120, width=160, seed=0,
             effects=None, flow_files=False, context=0, overwrite=False):
    """Write the synthetic dataset to `root` in VSPW layout and return a summary dict.

    Beside each video's frames and labels: `motion.json` (each layer's class and position per
    frame) and `layers/<frame>.png` (the layer seen at each pixel), from which
    `ground_truth_flow` computes the exact flow between any two frames; with `flow_files`
    also `flow/<frame>.flo` (Middlebury) and `flow_valid/<frame>.png` (255 = valid) holding
    the backward flow of each frame t > 0 to frame t - 1; with `context` (the context task's
    period, module doc) also `context/<frame>.png` (255 at the context pixels, else 0).

    Idempotent: when `root/spec.json` matches the requested spec nothing is written
    (summary["generated"] is False). A different or missing spec in a non-empty `root`
    is an error unless `overwrite`; overwriting only deletes what the generator wrote.
    The output of an older generator version is replaced. Video i of a split depends only
    on (seed, split, i), the frame size/count and the effects.
    """
    spec = _make_spec(train_videos, val_videos, frames, height, width, seed, effects, flow_files, context)
    root = os.fspath(root)
    if os.path.isdir(root) and os.listdir(root):
        existing = _read_spec(root)
        if existing == spec and not overwrite:
            logger.info("%s already holds the synthetic dataset with this spec; nothing to do", root)
            return _summary(root, spec, generated=False)
        outdated = existing is not None and existing.get("generator") == GENERATOR \
            and existing.get("version") != GENERATOR_VERSION
        if outdated and not overwrite:
            # replaced silently only when it is the same set, rendered anew: a different set would
            # leave models trained on the old one beside data they were not trained on
            same = {**existing, "version": GENERATOR_VERSION, "effects": resolve_effects(existing.get("effects"))}
            outdated = same == spec
            existing = same
        if outdated:
            logger.warning("%s was written by generator version %s; replacing it with version %d", root,
                           existing.get("version"), GENERATOR_VERSION)
        elif not overwrite:
            if existing is None:
                raise FileExistsError(f"{root} is not empty and has no {SPEC_FILE} (an interrupted "
                                      "generation or another dataset); pass overwrite=True (--overwrite)")
            changed = ", ".join(f"{k}: {existing.get(k)!r} -> {spec.get(k)!r}" for k in {**existing, **spec}
                                if existing.get(k) != spec.get(k))
            raise FileExistsError(f"{root} holds a synthetic dataset with a different spec ({changed}); "
                                  "pass overwrite=True (--overwrite) to replace it")
        _clear(root)

    start = time.perf_counter()
    for split_code, (split, ids) in enumerate(video_ids(spec).items()):
        for index, video in enumerate(ids):
            rng = np.random.default_rng([spec["seed"], split_code, index])
            out = render_video(rng, spec["frames"], spec["height"], spec["width"], spec["effects"],
                               spec.get("context", 0))
            _write_video(os.path.join(root, "data", video), out, spec["flow_files"], spec.get("context", 0))
        with open(os.path.join(root, f"{split}.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    classes = {"classes": [{"name": n, "color": list(c)}
                           for n, c in zip(SYNTHETIC_CLASSES, SYNTHETIC_COLORS)],
               "label_offset": LABEL_OFFSET}
    with open(os.path.join(root, "classes.json"), "w") as f:
        json.dump(classes, f, indent=1)
    # Written last: its presence marks a complete generation.
    with open(os.path.join(root, SPEC_FILE), "w") as f:
        json.dump(spec, f, indent=1)
    summary = _summary(root, spec, generated=True)
    logger.info("wrote %d frames of %d videos to %s in %.1fs", summary["frames"],
                spec["train_videos"] + spec["val_videos"], root, time.perf_counter() - start)
    return summary


def _frame_name(t):
    return f"{t:0{FRAME_DIGITS}d}"


def _write_video(video_dir, out, flow_files, context):
    folders = ("origin", "mask", "layers") + (("flow", "flow_valid") if flow_files else ())
    folders += (CONTEXT_DIR,) if context else ()
    for folder in folders:
        os.makedirs(os.path.join(video_dir, folder), exist_ok=True)
    for t, (image, label, layer) in enumerate(zip(out["images"], out["labels"], out["layers"])):
        name = _frame_name(t)
        _write(os.path.join(video_dir, "origin", name + ".jpg"), image[:, :, ::-1],
               [cv2.IMWRITE_JPEG_QUALITY, int(out["quality"][t])])
        _write(os.path.join(video_dir, "mask", name + ".png"), label, [])
        _write(os.path.join(video_dir, "layers", name + ".png"), layer, [])
        if context:
            _write(os.path.join(video_dir, CONTEXT_DIR, name + ".png"),
                   out["context"][t].astype(np.uint8) * CONTEXT_PIXEL, [])
        if flow_files and t > 0:
            flow, valid = layered_flow(out["positions"], layer, out["layers"][t - 1], t, t - 1)
            write_flo(os.path.join(video_dir, "flow", name + ".flo"), flow)
            _write(os.path.join(video_dir, "flow_valid", name + ".png"), valid.astype(np.uint8) * 255, [])
    motion = {"frames": len(out["images"]), "height": out["images"].shape[1],
              "width": out["images"].shape[2],
              "layers": [{"class": name, "position": position.tolist()}
                         for name, position in zip(out["layer_classes"], out["positions"])]}
    with open(os.path.join(video_dir, MOTION_FILE), "w") as f:
        json.dump(motion, f)


def ground_truth_flow(root, video_id, frame, key_frame):
    """Exact backward flow from frame `frame` to frame `key_frame` of a generated video.

    Returns (flow float32 (H, W, 2) in pixels, channel 0 = dx, valid bool (H, W)): pixel p of
    `frame` shows the surface point that is at p + flow(p) in `key_frame`; valid is False where
    that point is outside `key_frame` or occluded there. Any two frames work, in either order.
    `root` is a folder written by `generate` (datasets/prepare_synthetic.py).
    """
    video_dir = os.path.join(os.fspath(root), "data", video_id)
    motion_path = os.path.join(video_dir, MOTION_FILE)
    if not os.path.isfile(motion_path):
        if not os.path.isdir(video_dir):
            raise FileNotFoundError(f"{video_dir}: no such synthetic video in {root}")
        raise FileNotFoundError(f"{motion_path} is missing: {root} was written by an older generator "
                                "or is not a synthetic set; rerun datasets/prepare_synthetic.py")
    with open(motion_path) as f:
        motion = json.load(f)
    count = motion["frames"]
    for name, value in (("frame", frame), ("key_frame", key_frame)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 0 <= value < count:
            raise ValueError(f"{video_dir}: {name} must be a frame index in [0, {count}), got {value!r}")
    maps = []
    for t in (frame, key_frame):
        path = os.path.join(video_dir, "layers", _frame_name(t) + ".png")
        layer = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if layer is None or layer.shape != (motion["height"], motion["width"]):
            raise ValueError(f"{path}: expected a {motion['height']}x{motion['width']} layer map PNG, got "
                             f"{'an unreadable file' if layer is None else layer.shape}")
        maps.append(layer)
    positions = np.array([layer["position"] for layer in motion["layers"]])
    return layered_flow(positions, maps[0], maps[1], int(frame), int(key_frame))


def _write(path, array, params):
    if not cv2.imwrite(path, np.ascontiguousarray(array), params):
        raise OSError(f"could not write {path}")
