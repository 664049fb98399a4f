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
import os
from typing import Any, Optional

import cv2
import numpy as np

from training.defects import STAMPS, die_pattern
from transforms.boxes import iou_matrix

__all__ = ["CATEGORIES", "CATEGORY_NAMES", "MAX_DEFECTS", "generate_dataset", "render_image"]

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
    image, substrate, metal_color = die_pattern(rng, height, width)
    objects: list[dict[str, Any]] = []
    n_target = int(rng.integers(0, max_defects + 1))
    attempts = 0
    while len(objects) < n_target and attempts < 4 * max_defects:
        attempts += 1
        cat = int(rng.integers(1, 6))
        stamp, color, mode = STAMPS[cat](rng)
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
