"""The seam merge: the boxes that tile seams duplicated or cut, one box per object (numpy)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from transforms.boxes import box_areas, intersection_areas

__all__ = ["merge_detections"]


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
