"""Tiled detection for large images: the tile grid, and ``detect_tiled`` (the seam merge:
``transforms.tile_merge``).

A detector that resizes its input to a fixed size loses objects a few pixels wide in a large
image. ``detect_tiled`` runs it on overlapping tiles instead (numpy views of the image, never
copies), maps every tile's boxes to the whole image's pixels and merges the boxes that the
seams duplicated or cut, so the rest of the job sees one answer for the whole image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from transforms.boxes import normalized_to_pixels
from transforms.records import Detections, short_message
from transforms.tile_merge import merge_detections  # re-exported: the merge of detect_tiled

__all__ = [
    "FULL_IMAGE_GROUP",
    "TilingConfig",
    "detect_tiled",
    "merge_detections",
    "overlap_pixels",
    "tile_grid",
]

MAX_OVERLAP = 0.5
# Group of the detections of the whole-image call (``TilingConfig.full_image``).
FULL_IMAGE_GROUP = -1


@dataclasses.dataclass(frozen=True)
class TilingConfig:
    """How ``detect_tiled`` slices an image.

    Attributes:
        tile_size: tile height and width in pixels; 0 turns tiling off (one call per image).
        overlap: fraction of ``tile_size`` that neighbouring tiles share, in ``[0, 0.5)``.
        full_image: also run the whole image, so objects larger than a tile are still found.
        batch_size: tiles per detector call when the detector's batch dimension is free.
    """

    tile_size: int
    overlap: float = 0.2
    full_image: bool = False
    batch_size: int = 8


class Detector(Protocol):
    """What ``detect_tiled`` needs of ``transforms.detection.DetectorModel``."""

    batchable: bool

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]: ...


def overlap_pixels(tile_size: int, overlap: float) -> int:
    """Pixels that neighbouring tiles share: ``floor(tile_size * overlap)``, so always less
    than half a tile.

    Raises:
        ValueError: ``tile_size`` is not positive or ``overlap`` is outside ``[0, 0.5)``.
    """
    if tile_size <= 0:
        raise ValueError(f"tile size must be a positive number of pixels, got {tile_size}")
    if not 0.0 <= overlap < MAX_OVERLAP:
        raise ValueError(f"tile overlap must be in [0, {MAX_OVERLAP}), got {overlap}")
    return int(tile_size * overlap + 1e-9)  # 0.29 * 100 is 28.999...; still 29


def _starts(length: int, tile: int, step: int) -> np.ndarray:
    if length <= tile:
        return np.zeros(1, np.int64)
    count = -(-(length - tile) // step) + 1  # ceil division: the fewest tiles that cover
    starts = np.arange(count, dtype=np.int64) * step
    starts[-1] = length - tile  # the last tile ends at the edge instead of being padded
    return starts


def tile_grid(height: int, width: int, tile_size: int, overlap: float) -> np.ndarray:
    """Tiles that cover an image exactly, row by row.

    Tiles start every ``tile_size - overlap_pixels`` pixels; the last row and column are moved
    back to end at the image's bottom and right edges (so they overlap their neighbour more),
    never padded. Every tile has the same size, ``min(tile_size, height)`` by
    ``min(tile_size, width)``: an image smaller than one tile is one tile.

    Returns:
        int64 ``[T, 4]``: ``top, left, bottom, right`` (bottom and right exclusive).

    Raises:
        ValueError: a non-positive size, or ``overlap`` outside ``[0, 0.5)``.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image must have pixels, got {height}x{width}")
    step = tile_size - overlap_pixels(tile_size, overlap)
    tile_h, tile_w = min(tile_size, height), min(tile_size, width)
    tops = _starts(height, tile_h, step)
    lefts = _starts(width, tile_w, step)
    top, left = (grid.reshape(-1) for grid in np.meshgrid(tops, lefts, indexing="ij"))
    return np.stack([top, left, top + tile_h, left + tile_w], axis=1)


def _run_tiles(model: Detector, image: np.ndarray, grid: np.ndarray,
               batch_size: int) -> list[Detections]:
    per_call = max(1, batch_size) if model.batchable else 1
    found: list[Detections] = []
    for start in range(0, len(grid), per_call):
        views = [image[top:bottom, left:right] for top, left, bottom, right in
                 grid[start:start + per_call]]
        found.extend(model.detect(views))
    return found


def detect_tiled(model: Detector, image: np.ndarray, config: TilingConfig) -> Detections:
    """Detects objects in one image tile by tile and merges the answers.

    Args:
        model: a ``DetectorModel`` (``detect`` of RGB uint8 images, boxes normalized to each
            input; ``batchable`` when its batch dimension is free).
        image: RGB uint8 ``[H, W, 3]``.
        config: the tiling; ``tile_size`` 0 is one call for the whole image.

    Returns:
        One ``Detections`` for the whole image: boxes normalized to the whole image, merged
        at the seams, best score first, with every detection the tiles gave (the score
        threshold and the detection cap are applied afterwards). If any call failed, the
        image fails with that call's error.
    """
    height, width = image.shape[:2]
    grid = (tile_grid(height, width, config.tile_size, config.overlap)
            if config.tile_size > 0 else np.zeros((0, 4), np.int64))
    if len(grid) <= 1:  # tiling off, or the image is one tile: exactly the untiled call
        return model.detect([image])[0]
    found = _run_tiles(model, image, grid, config.batch_size)
    regions = [*grid]
    groups = list(range(len(grid)))
    if config.full_image:
        found.extend(model.detect([image]))
        regions.append(np.array([0, 0, height, width]))
        groups.append(FULL_IMAGE_GROUP)
    boxes, scores, classes, box_groups, box_regions = [], [], [], [], []
    for region, group, tile_found in zip(regions, groups, found):
        if tile_found.error is not None:
            where = "the whole image" if group == FULL_IMAGE_GROUP else (
                f"tile {group} at row {region[0]}, column {region[1]}")
            return Detections.failed(short_message(f"{where}: {tile_found.error}"))
        top, left, bottom, right = (int(v) for v in region)
        local = normalized_to_pixels(tile_found.boxes, bottom - top, right - left)
        pixels = local + np.array([top, left, top, left], np.float32)
        boxes.append(pixels)
        scores.append(tile_found.scores)
        classes.append(tile_found.classes)
        box_groups.append(np.full(len(pixels), group))
        box_regions.append(np.broadcast_to(region, (len(pixels), 4)))
    merged, merged_scores, merged_classes = merge_detections(
        np.concatenate(boxes), np.concatenate(scores), np.concatenate(classes),
        groups=np.concatenate(box_groups), regions=np.concatenate(box_regions))
    scale = np.array([height, width, height, width], np.float32)
    return Detections(merged / scale, merged_scores, merged_classes)
