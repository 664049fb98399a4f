"""Detector box conventions: what ``detection_boxes`` are expressed in, how they map to the
image's own normalized ``[ymin, xmin, ymax, xmax]``, and the range that proves a convention.

Pure numpy (docs/detector-exports.md, "Box conventions"):

- ``normalized``: ``[0, 1]`` of the image fed (every OD API export; Model Garden RetinaNet
  exported with ``output_normalized_coordinates``);
- ``image_info``: pixels of the frame a Model Garden export resizes to inside its graph,
  mapped back with its ``image_info`` output ``[[orig_h, orig_w], [desired_h, desired_w],
  [y_scale, x_scale], [y_offset, x_offset]]``, as the exporter's own normalized path does;
- ``pixels``: pixels of the image fed (only ever stated by the user).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = [
    "AUTO",
    "BOX_FORMATS",
    "IMAGE_INFO",
    "NORMALIZED",
    "PIXELS",
    "RANGE_MARGIN",
    "box_range_problem",
    "decide_box_format",
    "describe_box_format",
    "probe_image",
    "seen_boxes",
    "to_normalized",
]

AUTO = "auto"
NORMALIZED = "normalized"
PIXELS = "pixels"
IMAGE_INFO = "image_info"
BOX_FORMATS = (AUTO, NORMALIZED, PIXELS, IMAGE_INFO)

# A box may reach past its frame by up to one frame size on each side (unclipped detectors
# overshoot a little; clipping then drops or trims them). Normalized and pixel boxes differ by
# the frame's size in pixels, hundreds for any real detector, so this margin still tells them
# apart: normalized boxes lie in [-1, 2], pixel boxes of a real detection reach far beyond 2.
RANGE_MARGIN = 1.0

_DESCRIPTIONS = {
    NORMALIZED: "boxes normalized to the image",
    PIXELS: "boxes in pixels of the image",
    IMAGE_INFO: "boxes in resized-frame pixels, mapped with image_info",
}


def describe_box_format(box_format: str) -> str:
    """A few words for ``describe()`` and the summary."""
    return _DESCRIPTIONS[box_format]


def _frame(box_format: str, height: int, width: int,
           image_info: Optional[np.ndarray]) -> tuple[float, float, str]:
    """The frame's height and width in the convention's units, and its name in messages."""
    if box_format == NORMALIZED:
        return 1.0, 1.0, "normalized coordinates [0, 1]"
    if box_format == PIXELS:
        return float(height), float(width), f"pixels of this {height}x{width} image"
    info = _checked_image_info(image_info)
    frame_h, frame_w = (float(v) for v in info[1])
    return frame_h, frame_w, f"pixels of the {frame_h:g}x{frame_w:g} resized frame (image_info)"


def _checked_image_info(image_info: Optional[np.ndarray]) -> np.ndarray:
    info = None if image_info is None else np.asarray(image_info, dtype=np.float64)
    if info is None or info.shape != (4, 2):
        shape = "none" if info is None else list(info.shape)
        raise ValueError(f"image_info is {shape} per image; a Model Garden export gives "
                         "[4, 2]: original size, resized size, scale, offset")
    if not (np.all(np.isfinite(info[:3])) and np.all(info[:3] > 0)):
        raise ValueError(f"image_info {info.tolist()} has a size or scale that is not "
                         "positive")
    return info


def seen_boxes(boxes: np.ndarray) -> np.ndarray:
    """The boxes with four finite coordinates and a positive area: what a check can judge."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    with np.errstate(invalid="ignore"):
        keep = (np.all(np.isfinite(boxes), axis=1) & (boxes[:, 2] > boxes[:, 0])
                & (boxes[:, 3] > boxes[:, 1]))
    return boxes[keep]


def box_range_problem(boxes: np.ndarray, box_format: str, height: int, width: int,
                      image_info: Optional[np.ndarray] = None) -> Optional[str]:
    """Why ``boxes`` (one image's, padding removed) cannot be in ``box_format``, or None.

    A finite coordinate outside the frame by more than ``RANGE_MARGIN`` frames refuses any
    convention. For the two pixel conventions, boxes that all lie within ``[-1, 2]`` (some
    with an area) refuse too: they are normalized boxes, whose misreading as pixels would
    otherwise be silent (tiny boxes in the corner). Non-finite coordinates are left to
    ``select_regions``, which drops and counts them.

    Raises:
        ValueError: ``image_info`` is missing or malformed for the ``image_info`` convention.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    frame_h, frame_w, frame = _frame(box_format, height, width, image_info)
    extent = np.array([frame_h, frame_w, frame_h, frame_w])
    with np.errstate(invalid="ignore"):
        relative = boxes / extent
        outside = np.isfinite(relative) & ((relative < -RANGE_MARGIN)
                                           | (relative > 1 + RANGE_MARGIN))
    if np.any(outside):
        worst = boxes[outside][np.argmax(np.abs(relative[outside]))]
        return (f"detection_boxes has {worst:.6g}, more than one frame size outside {frame}")
    seen = seen_boxes(boxes)
    if box_format != NORMALIZED and len(seen) and min(frame_h, frame_w) > 2 and (
            np.all(seen >= -RANGE_MARGIN) and np.all(seen <= 1 + RANGE_MARGIN)):
        return (f"every detection_boxes value lies within [-1, 2] though the boxes should be "
                f"{frame}: they look normalized; pass --detector_box_format=normalized")
    return None


def to_normalized(boxes: np.ndarray, box_format: str, height: int, width: int,
                  image_info: Optional[np.ndarray] = None) -> np.ndarray:
    """Boxes ``[N, 4]`` in ``box_format`` as float32 normalized to the image fed.

    ``image_info``: divided by the scale ``image_info[2]``, then by the original size
    ``image_info[0]`` and clipped to ``[0, 1]``, as the Model Garden exporter's own
    ``output_normalized_coordinates`` path does (``official/vision/serving/detection.py``).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if box_format == NORMALIZED:
        return boxes
    if box_format == PIXELS:
        return boxes / np.array([height, width, height, width], np.float32)
    info = _checked_image_info(image_info).astype(np.float32)
    scale = np.tile(info[2], 2)
    original = np.tile(info[0], 2)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.clip((boxes / scale) / original, 0.0, 1.0)  # NaN stays NaN


# The probe: small, not square (a resize that keeps the aspect ratio gives different y and x
# scales), with pure colour areas and a bright square on a grey gradient, so that a detector
# has something to find; random weights find boxes anywhere.
PROBE_HEIGHT, PROBE_WIDTH = 96, 128


def probe_image() -> np.ndarray:
    """The RGB uint8 ``[96, 128, 3]`` image of the validation probe (always the same)."""
    ramp = np.linspace(60, 196, PROBE_WIDTH, dtype=np.float32)
    image = np.repeat(np.broadcast_to(ramp, (PROBE_HEIGHT, PROBE_WIDTH))[..., None], 3, axis=2)
    image = image.astype(np.uint8)
    for (top, left, bottom, right), colour in (
            ((10, 12, 40, 44), (255, 0, 0)), ((52, 70, 88, 120), (0, 255, 0)),
            ((8, 84, 30, 124), (0, 0, 255)), ((60, 10, 84, 40), (255, 255, 255))):
        image[top:bottom, left:right] = colour
    return image


def decide_box_format(requested: str, *, has_image_info: bool, boxes: Optional[np.ndarray],
                      height: int, width: int,
                      image_info: Optional[np.ndarray] = None) -> tuple[str, str]:
    """The convention a detector's boxes are in, from what it returned for the probe image.

    Args:
        requested: ``--detector_box_format`` (``AUTO`` or a stated convention).
        has_image_info: the signature has an ``image_info`` output (a Model Garden export).
        boxes: the probe's boxes, padding removed; None when the probe call failed.
        height, width: the probe image's size.
        image_info: the probe's ``image_info`` (Model Garden exports).

    Returns:
        ``(box_format, how)``: the convention and a few words on how it was decided.

    Raises:
        ValueError: one line naming what the probe saw and the flag that overrides it.
    """
    if requested == IMAGE_INFO and not has_image_info:
        raise ValueError("--detector_box_format=image_info, but the signature has no "
                         "image_info output to map boxes with")
    seen = None if boxes is None else seen_boxes(boxes)
    if requested != AUTO:
        candidates = [requested]
    elif has_image_info:  # the exporter's default first; RetinaNet may be normalized
        candidates = [IMAGE_INFO, NORMALIZED]
    else:  # the OD API exports only normalized boxes; pixels are never guessed
        candidates = [NORMALIZED]
    if seen is None or not len(seen):
        why = "the probe call failed" if boxes is None else "the probe image gave no boxes"
        if requested != AUTO:
            return requested, f"stated; {why} to check"
        default = "the exporter's default" if has_image_info else "as OD API exports give"
        return candidates[0], f"{default}; {why}, checked at run time"
    problems = []
    for candidate in candidates:
        problem = box_range_problem(boxes, candidate, height, width, image_info)
        if problem is None:
            return candidate, "stated, checked by the probe" if requested != AUTO else (
                "proved by the probe")
        problems.append(problem)
    if requested != AUTO:
        hint = "; leave --detector_box_format=auto or state another convention"
    elif has_image_info:
        hint = "; state the convention with --detector_box_format=normalized|pixels|image_info"
    else:
        hint = ("; the signature has no image_info output to map pixels with: if they are "
                "pixels of the input image, pass --detector_box_format=pixels")
    raise ValueError(f"probe inference on a {height}x{width} generated image: {problems[0]}"
                     f"{hint}")
