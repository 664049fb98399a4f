"""Tiled detection for large images: the tile grid, the seam merge, and ``detect_tiled``.

A detector that resizes its input to a fixed size loses objects a few pixels wide in a large
image. ``detect_tiled`` runs it on overlapping tiles instead (numpy views of the image, never
copies), maps every tile's boxes to the whole image's pixels and merges the boxes that the
seams duplicated or cut, so the rest of the job sees one answer for the whole image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from transforms.boxes import box_areas, intersection_areas, normalized_to_pixels
from transforms.records import Detections, short_message

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


def _extents(boxes: np.ndarray, groups: np.ndarray, names: np.ndarray) -> np.ndarray:
    """The bounding box of each group's boxes (NaN for a group of only non-finite boxes)."""
    extents = np.full((len(names), 4), np.nan)
    for k, name in enumerate(names):
        member = boxes[groups == name]
        member = member[np.all(np.isfinite(member), axis=1)]
        if len(member):
            extents[k] = [*member[:, :2].min(axis=0), *member[:, 2:].max(axis=0)]
    return extents


def _candidate_pairs(boxes: np.ndarray, groups: np.ndarray | None) -> list[tuple]:
    """Blocks ``(rows, cols)`` of index pairs that may intersect: all pairs without groups;
    with groups, only pairs of different groups whose extents intersect (neighbouring tiles)."""
    everything = np.arange(len(boxes))
    if groups is None:
        return [(everything, everything)]
    names = np.unique(groups)
    extents = _extents(boxes, groups, names)
    touching = np.triu(intersection_areas(extents, extents) > 0, k=1)
    return [(everything[groups == names[a]], everything[groups == names[b]])
            for a, b in zip(*np.nonzero(touching))]


def _inside(boxes: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """``[len(boxes), len(regions)]``: box i lies within region j."""
    return ((boxes[:, None, 0] >= regions[None, :, 0]) & (boxes[:, None, 1] >= regions[None, :, 1])
            & (boxes[:, None, 2] <= regions[None, :, 2])
            & (boxes[:, None, 3] <= regions[None, :, 3]))


def _matches(boxes: np.ndarray, classes: np.ndarray, groups: np.ndarray | None,
             regions: np.ndarray, finite: np.ndarray, threshold: float) -> dict[int, list[int]]:
    """For each box, the boxes that are the same object (see ``merge_detections``)."""
    areas = box_areas(boxes)
    partners: dict[int, list[int]] = {}
    for rows, cols in _candidate_pairs(boxes, groups):
        inter = intersection_areas(boxes[rows], boxes[cols])
        a, b = areas[rows][:, None], areas[cols][None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (a + b - inter)
            ios = inter / np.minimum(a, b)
        # The smaller box may be a partial view of the larger one only if its detector did
        # not see all of the larger box; else that detector saw both and called them two.
        partial_row = (a <= b) & ~_inside(boxes[cols], regions[rows]).T
        partial_col = (b <= a) & ~_inside(boxes[rows], regions[cols])
        same = (iou >= threshold) | ((ios >= threshold) & (partial_row | partial_col))
        same &= (inter > 0) & (classes[rows][:, None] == classes[cols][None, :])
        same &= finite[rows][:, None] & finite[cols][None, :]
        for r, c in zip(*np.nonzero(same)):
            i, j = int(rows[r]), int(cols[c])
            if i != j:
                partners.setdefault(i, []).append(j)
                partners.setdefault(j, []).append(i)
    return partners


def merge_detections(boxes_px: np.ndarray, scores: np.ndarray, classes: np.ndarray, *,
                     match_threshold: float = 0.5, groups: np.ndarray | None = None,
                     regions: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merges the boxes that tile seams duplicated or cut into one box per object.

    Two boxes of the same class match when their IoU reaches ``match_threshold``, or when
    their intersection over the smaller box's area reaches it and the smaller box's detector
    did not see all of the larger box (a box cut by a tile edge lies inside its whole
    counterpart, so its IoU with it can be low; a small box whose tile holds all of a large
    one is another object, as a particle on a stain). Boxes that match, directly or through
    each other, become one box with the best score among them: the best-scored member whose
    tile held all of them (a tile saw the object whole), else their union (the object spans
    tiles; always the union when ``regions`` is None).

    Args:
        boxes_px: ``[N, 4]`` ``ymin, xmin, ymax, xmax`` in the whole image's pixels.
        scores: ``[N]``.
        classes: ``[N]`` detector classes; boxes of different classes never match.
        match_threshold: the IoU / intersection over the smaller box that makes a match.
        groups: ``[N]`` tile of each box; boxes of one group never match (the detector already
            suppressed its own duplicates). None: any two boxes may match.
        regions: ``[N, 4]`` the pixels (top, left, bottom, right) the detector saw when it gave
            each box: its tile. None: unknown, any smaller box may be a partial view (plain
            intersection over the smaller box, as SAHI matches).

    Returns:
        ``(boxes_px float32 [M, 4], scores float32 [M], classes int32 [M])``, best score
        first. Boxes or scores that are not finite match nothing and are passed on as they are.
    """
    boxes, scores, classes, groups, regions = _as_arrays(boxes_px, scores, classes, groups,
                                                         regions)
    finite = np.isfinite(scores) & np.all(np.isfinite(boxes), axis=1)
    partners = _matches(boxes, classes, groups, regions, finite, match_threshold)
    merged, merged_scores = boxes.copy(), scores.copy()
    absorbed = np.zeros(len(boxes), bool)
    for members in _components(partners):
        first = members[0]
        absorbed[members[1:]] = True
        merged[first] = _merged_box(boxes[members], scores[members], regions[members])
        merged_scores[first] = scores[members].max()
    keep = np.flatnonzero(~absorbed)
    best = merged_scores[keep]
    keep = keep[np.argsort(-np.where(np.isnan(best), -np.inf, best), kind="stable")]
    return merged[keep].astype(np.float32), merged_scores[keep], classes[keep]


def _as_arrays(boxes_px, scores, classes, groups, regions) -> tuple:
    """``merge_detections``' arguments as arrays of one entry per box (regions NaN when
    unknown); ValueError when their lengths differ."""
    boxes = np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    classes = np.asarray(classes).reshape(-1).astype(np.int32)
    count = len(boxes)
    groups = None if groups is None else np.asarray(groups).reshape(-1)
    regions = (np.full((count, 4), np.nan) if regions is None
               else np.asarray(regions, dtype=np.float64).reshape(-1, 4))
    if not len(scores) == len(classes) == len(regions) == count or (
            groups is not None and len(groups) != count):
        raise ValueError("boxes, scores, classes, groups and regions need one entry per box")
    return boxes, scores, classes, groups, regions


def _components(partners: dict[int, list[int]]) -> Iterator[np.ndarray]:
    """The boxes that match directly or through each other, each group in index order."""
    seen: set[int] = set()
    for i in sorted(partners):
        if i in seen:
            continue
        component, frontier = {i}, [i]
        while frontier:
            for j in partners[frontier.pop()]:
                if j not in component:
                    component.add(j)
                    frontier.append(j)
        seen |= component
        yield np.array(sorted(component))


def _merged_box(boxes: np.ndarray, scores: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """One object's box from its matching boxes: the best-scored one whose tile held all of
    them (it saw the object whole), else their union."""
    union = np.array([*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0)])
    whole = np.flatnonzero(_inside(union[np.newaxis], regions)[0])
    return boxes[whole[np.argmax(scores[whole])]] if len(whole) else union


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
