"""Deterministic synthetic wafer-inspection images with COCO annotations.

Usage::

    python -m training.generate --output DIR --num_images N --seed S [--width 512 --height 512]

Every image draws from its own ``numpy.random.Generator`` seeded by ``(seed, index)``, so the same
seed gives byte-identical files and any image can be regenerated alone (``render_image``).
No TensorFlow needed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any, Optional

import cv2
import numpy as np

from transforms.boxes import iou_matrix

__all__ = [
    "CATEGORIES",
    "CATEGORY_NAMES",
    "MAX_DEFECTS",
    "generate_dataset",
    "render_image",
]

CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "particle", "supercategory": "defect"},
    {"id": 2, "name": "scratch", "supercategory": "defect"},
    {"id": 3, "name": "stain", "supercategory": "defect"},
    {"id": 4, "name": "bridge", "supercategory": "defect"},
    {"id": 5, "name": "void", "supercategory": "defect"},
]
CATEGORY_NAMES: dict[int, str] = {c["id"]: c["name"] for c in CATEGORIES}
MAX_DEFECTS = 6
# A defect whose visible part is smaller than this (pixels of mask) is not placed.
_MIN_VISIBLE_PIXELS = 30
# New defects may not overlap earlier ones by more than this IoU (keeps GT unambiguous).
_MAX_OVERLAP_IOU = 0.1


def _die_pattern(rng: np.random.Generator, height: int,
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


_STAMPS = {1: _stamp_particle, 2: _stamp_scratch, 3: _stamp_stain, 4: _stamp_bridge,
           5: _stamp_void}


def _placed(rng: np.random.Generator, stamp: np.ndarray, height: int, width: int,
            objects: list[dict[str, Any]]) -> Optional[tuple[tuple[slice, slice], Any, list]]:
    """Where a stamp lands: the image region, the stamp's visible part and its COCO box; None
    when it is cut away, too small or overlaps an earlier defect."""
    sh, sw = stamp.shape
    # Centers may fall slightly outside the image so that some defects are cut by the border.
    cy = int(rng.integers(-sh // 4, height + sh // 4))
    cx = int(rng.integers(-sw // 4, width + sw // 4))
    y0, x0 = cy - sh // 2, cx - sw // 2
    iy0, ix0 = max(0, y0), max(0, x0)
    iy1, ix1 = min(height, y0 + sh), min(width, x0 + sw)
    if iy1 <= iy0 or ix1 <= ix0:
        return None
    m = stamp[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
    ys, xs = np.nonzero(m > 0.3)
    if len(ys) < _MIN_VISIBLE_PIXELS:
        return None
    bbox = [float(ix0 + xs.min()), float(iy0 + ys.min()),
            float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    if bbox[2] < 4 or bbox[3] < 4:
        return None
    # COCO [x, y, w, h] to [ymin, xmin, ymax, xmax]: exact, the values are whole numbers.
    corners = [[y, x, y + h, x + w] for x, y, w, h in [bbox] + [o["bbox"] for o in objects]]
    if objects and iou_matrix(corners[:1], corners[1:]).max() > _MAX_OVERLAP_IOU:
        return None
    return (slice(iy0, iy1), slice(ix0, ix1)), m, bbox


def _blend(rng: np.random.Generator, region: np.ndarray, m: np.ndarray, color: np.ndarray,
           mode: str, substrate: np.ndarray, metal_color: np.ndarray) -> None:
    """Paints one defect's stamp ``m`` into ``region`` (a view of the image), by its mode."""
    a = m[..., None]
    if mode == "add":
        region += a * color
    elif mode == "metal":
        # Excess metal: a little further from the substrate than the lines it shorts.
        residue = np.clip(metal_color + 0.15 * (metal_color - substrate)
                          / (np.abs(metal_color - substrate).max() + 1e-6), 0.0, 1.0)
        region[:] = region * (1 - a) + a * residue
    else:  # void: pattern and film missing, a darker pit
        pit = substrate * rng.uniform(0.3, 0.6)
        region[:] = region * (1 - a) + a * pit


def _photographed(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Illumination gradient, contrast, blur and sensor noise; the RGB uint8 pixels."""
    height, width = image.shape[:2]
    gy = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    gx = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    gain = 1.0 + rng.uniform(-0.25, 0.25) * gy + rng.uniform(-0.25, 0.25) * gx
    contrast = rng.uniform(0.7, 1.3)
    image = (image - 0.5) * contrast + 0.5
    image *= gain[..., None]
    image = cv2.GaussianBlur(image, (3, 3), rng.uniform(0.4, 1.0))
    noise = rng.standard_normal((height, width, 3), dtype=np.float32) * rng.uniform(0.01, 0.04)
    image += noise
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)


def render_image(seed: int, index: int, width: int = 512, height: int = 512, *,
                 max_defects: int = MAX_DEFECTS) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Render one image (``max_defects`` above the default only to densify training data).

    Returns:
        (RGB uint8 ``[height, width, 3]``, list of ``{"bbox": [x, y, w, h], "category_id": k}``).
    """
    rng = np.random.default_rng([seed, index])
    image, substrate, metal_color = _die_pattern(rng, height, width)
    objects: list[dict[str, Any]] = []
    n_target = int(rng.integers(0, max_defects + 1))
    attempts = 0
    while len(objects) < n_target and attempts < 4 * max_defects:
        attempts += 1
        cat = int(rng.integers(1, 6))
        stamp, color, mode = _STAMPS[cat](rng)
        placed = _placed(rng, stamp, height, width, objects)
        if placed is None:
            continue
        where, m, bbox = placed
        _blend(rng, image[where], m, color, mode, substrate, metal_color)
        objects.append({"bbox": bbox, "category_id": cat})
    return _photographed(rng, image), objects


def generate_dataset(output_dir: str, num_images: int, seed: int, *, width: int = 512,
                     height: int = 512, image_format: str = "png",
                     start_index: int = 0) -> str:
    """Write ``output_dir/images/*`` and ``output_dir/annotations.json``.

    Returns:
        The path of ``annotations.json``.
    """
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    image_dir = os.path.join(output_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    params = [int(cv2.IMWRITE_PNG_COMPRESSION), 3] if image_format == "png" else [
        int(cv2.IMWRITE_JPEG_QUALITY), 95]
    images, annotations = [], []
    for i in range(start_index, start_index + num_images):
        pixels, objects = render_image(seed, i, width, height)
        file_name = f"wafer_{seed}_{i:06d}.{image_format}"
        ok, buf = cv2.imencode("." + image_format, cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise RuntimeError(f"could not encode {file_name}")
        with open(os.path.join(image_dir, file_name), "wb") as f:
            f.write(buf.tobytes())
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for obj in objects:
            x, y, w, h = obj["bbox"]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": obj["category_id"], "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0})
    coco = {"info": {"description": "synthetic wafer inspection", "seed": seed},
            "images": images, "annotations": annotations, "categories": CATEGORIES}
    path = os.path.join(output_dir, "annotations.json")
    with open(path, "w") as f:
        json.dump(coco, f, sort_keys=True)
    return path


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="Output folder.")
    parser.add_argument("--num_images", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--format", choices=("png", "jpg"), default="png")
    args = parser.parse_args(argv)
    path = generate_dataset(args.output, args.num_images, args.seed, width=args.width,
                            height=args.height, image_format=args.format)
    print(path)


if __name__ == "__main__":
    main()
