"""Defect stamps: the die pattern and the five kinds of defect drawn on it (numpy, OpenCV)."""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["STAMPS", "die_pattern"]


def die_pattern(rng: np.random.Generator, height: int,
                 width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (float32 RGB image in [0, 1], substrate colour, metal colour) of a die pattern."""
    pitch_y = int(rng.integers(40, 80))
    pitch_x = int(rng.integers(40, 80))
    substrate = rng.uniform(0.15, 0.45, size=3).astype(np.float32)
    metal = np.clip(substrate + rng.uniform(0.25, 0.5) * rng.choice([-1.0, 1.0], p=[0.2, 0.8])
                    + rng.uniform(-0.08, 0.08, size=3), 0.0, 1.0).astype(np.float32)
    tile = np.zeros((pitch_y, pitch_x), np.float32)
    # Parallel lines in the upper part of the tile, a pad and a perpendicular bus below.
    line_w = int(rng.integers(2, 5))
    gap = int(rng.integers(3, 8))
    n_lines = max(1, (pitch_y // 2) // (line_w + gap))
    x0, x1 = int(rng.integers(2, 8)), pitch_x - int(rng.integers(2, 8))
    for i in range(n_lines):
        y = 2 + i * (line_w + gap)
        tile[y:y + line_w, x0:x1] = 1.0
    pad = int(rng.integers(6, max(7, min(pitch_x, pitch_y) // 3)))
    py, px = pitch_y - pad - 3, int(rng.integers(2, max(3, pitch_x - pad - 2)))
    tile[py:py + pad, px:px + pad] = 1.0
    bx = int(rng.integers(0, pitch_x - line_w))
    tile[pitch_y // 2:, bx:bx + line_w] = 1.0
    reps_y, reps_x = height // pitch_y + 2, width // pitch_x + 2
    oy, ox = int(rng.integers(0, pitch_y)), int(rng.integers(0, pitch_x))
    mask = np.tile(tile, (reps_y, reps_x))[oy:oy + height, ox:ox + width]
    if rng.random() < 0.5:  # some dies are rotated by 90 degrees
        reps = (height // pitch_x + 2, width // pitch_y + 2)
        mask = np.ascontiguousarray(np.tile(tile.T, reps)[ox:ox + height, oy:oy + width])
    image = substrate[None, None, :] + mask[..., None] * (metal - substrate)[None, None, :]
    return image.astype(np.float32), substrate, metal


def _stamp_particle(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    r = rng.uniform(2.5, 11.0)
    size = int(2 * r + 6)
    m = np.zeros((size, size), np.float32)
    c = size / 2.0
    axes = (max(1, int(r * rng.uniform(0.7, 1.0))), max(1, int(r * rng.uniform(0.7, 1.0))))
    cv2.ellipse(m, (int(c), int(c)), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1,
                cv2.LINE_AA)
    # A rounded body with an off-centre highlight, unlike the flat floor of a void.
    hy, hx = c + rng.uniform(-0.3, 0.3, 2) * r
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    m *= 0.6 + 0.7 * np.exp(-((yy - hy) ** 2 + (xx - hx) ** 2) / (2 * (0.45 * r) ** 2))
    color_shift = rng.uniform(0.35, 0.7) * rng.choice([-1.0, 1.0])
    return m, np.full(3, color_shift, np.float32), "add"


def _stamp_scratch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    length = rng.uniform(50, 220)
    angle = rng.uniform(0, math.pi)
    bend = rng.uniform(-0.15, 0.15) * length
    dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
    size = int(length + 2 * abs(bend) + 10)
    c = size / 2.0
    nx, ny = -math.sin(angle), math.cos(angle)
    pts = np.array([[c - dx, c - dy], [c + nx * bend, c + ny * bend], [c + dx, c + dy]])
    t = np.linspace(0, 1, 24)[:, None]
    curve = (1 - t) ** 2 * pts[0] + 2 * (1 - t) * t * pts[1] + t ** 2 * pts[2]
    m = np.zeros((size, size), np.float32)
    cv2.polylines(m, [np.round(curve * 4).astype(np.int32)], False, 1.0,
                  int(rng.integers(2, 4)), cv2.LINE_AA, shift=2)
    color_shift = rng.uniform(0.4, 0.7) * rng.choice([-1.0, 1.0], p=[0.3, 0.7])
    return m, np.full(3, color_shift, np.float32), "add"


def _stamp_stain(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    r = rng.uniform(18, 60)
    size = int(2.6 * r)
    m = np.zeros((size, size), np.float32)
    c = size / 2.0
    n = 10
    ang = np.sort(rng.uniform(0, 2 * math.pi, n))
    rad = r * rng.uniform(0.6, 1.0, n)
    poly = np.stack([c + rad * np.cos(ang), c + rad * np.sin(ang)], 1)
    cv2.fillPoly(m, [np.round(poly).astype(np.int32)], 1.0, cv2.LINE_AA)
    m = cv2.GaussianBlur(m, (0, 0), r * 0.18)
    m = np.clip(m * 1.6, 0, 1)
    tint = rng.uniform(-0.3, 0.3, size=3) + rng.uniform(0.18, 0.35) * rng.choice([-1.0, 1.0])
    return m, tint.astype(np.float32), "add"


def _stamp_bridge(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    length = rng.uniform(10, 28)
    width = rng.uniform(3, 7)
    size = int(length + 8)
    m = np.zeros((size, size), np.float32)
    c = size / 2.0
    angle = rng.choice([0.0, 90.0]) + rng.uniform(-12, 12)
    box = cv2.boxPoints(((c, c), (length, width), angle))
    cv2.fillPoly(m, [np.round(box * 4).astype(np.int32)], 1.0, cv2.LINE_AA, shift=2)
    for end in (-1, 1):  # bulbous ends where the short touches the lines
        ex = c + end * math.cos(math.radians(angle)) * length / 2
        ey = c + end * math.sin(math.radians(angle)) * length / 2
        cv2.circle(m, (int(round(ex)), int(round(ey))), max(2, int(width * 0.7)), 1.0, -1,
                   cv2.LINE_AA)
    return m, np.zeros(3, np.float32), "metal"


def _stamp_void(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    w, h = rng.uniform(14, 45), rng.uniform(14, 45)
    size = int(max(w, h) * 1.5 + 6)
    m = np.zeros((size, size), np.float32)
    c = size / 2.0
    if rng.random() < 0.5:
        box = cv2.boxPoints(((c, c), (w, h), float(rng.uniform(0, 90))))
        cv2.fillPoly(m, [np.round(box * 4).astype(np.int32)], 1.0, cv2.LINE_AA, shift=2)
    else:
        cv2.ellipse(m, (int(c), int(c)), (int(w / 2), int(h / 2)), float(rng.uniform(0, 180)),
                    0, 360, 1.0, -1, cv2.LINE_AA)
    return m, np.zeros(3, np.float32), "void"


# The stamp of each category id (training.generate.CATEGORIES): (mask, colour, blend mode).
STAMPS = {1: _stamp_particle, 2: _stamp_scratch, 3: _stamp_stain, 4: _stamp_bridge,
           5: _stamp_void}
