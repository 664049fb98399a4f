"""Fuzz tests: decoding never lets anything but DecodeError escape; box functions never raise
and always give crops inside the image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms.boxes import (
    clip_boxes,
    crop_box,
    normalized_to_pixels,
    pad_boxes,
    valid_boxes,
)
from transforms.decoding import (
    DecodeError,
    decode_image,
    image_size_from_header,
)
from transforms.records import Detections
from transforms.regions import select_regions

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def _encoded(ext: str) -> bytes:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


REAL_IMAGES = [_encoded(ext) for ext in (".png", ".jpg", ".bmp", ".webp", ".tiff")]
# Small limit: a mutated header may claim a large size; the check must refuse it cheaply.
MAX_PIXELS = 1_000_000


def _decode_or_decode_error(data: bytes) -> None:
    try:
        pixels = decode_image(data, max_pixels=MAX_PIXELS)
    except DecodeError as exc:
        assert str(exc)
        return
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert 0 < pixels.shape[0] * pixels.shape[1] <= MAX_PIXELS


@FUZZ
@given(st.binary(max_size=4096))
def test_decode_random_bytes(data):
    _decode_or_decode_error(data)


@FUZZ
@given(st.sampled_from(range(len(REAL_IMAGES))), st.floats(0.0, 1.0))
def test_decode_truncated_real_images(which, fraction):
    data = REAL_IMAGES[which]
    _decode_or_decode_error(data[:int(len(data) * fraction)])


@FUZZ
@given(st.sampled_from(range(len(REAL_IMAGES))),
       st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=8))
def test_decode_real_images_with_corrupted_bytes(which, edits):
    # Most edits land in the header (first 200 bytes): sizes, markers, chunk lengths.
    data = bytearray(REAL_IMAGES[which])
    for position, value in edits:
        data[position % len(data)] = value
    _decode_or_decode_error(bytes(data))
    size = image_size_from_header(bytes(data))
    assert size is None or (len(size) == 2 and min(size) >= 0)


ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=32)
SIZES = st.integers(1, 64)


@FUZZ
@given(SIZES, SIZES, st.lists(st.lists(ANY_FLOAT, min_size=4, max_size=4), max_size=12),
       st.floats(0.0, 2.0))
def test_box_pipeline_gives_crops_inside_the_image(height, width, raw, padding):
    image = np.zeros((height, width, 3), np.uint8)
    boxes = np.array(raw, np.float32).reshape(-1, 4)
    with np.errstate(over="ignore", invalid="ignore"):
        pixels = clip_boxes(pad_boxes(normalized_to_pixels(boxes, height, width), padding),
                            height, width)
    valid = valid_boxes(pixels)
    assert pixels.shape == boxes.shape and valid.shape == (len(boxes),)
    for box in pixels[valid]:
        assert 0 <= box[0] < box[2] <= height and 0 <= box[1] < box[3] <= width
        crop = crop_box(image, box)
        assert crop.shape[0] >= 1 and crop.shape[1] >= 1
        # Inside the image: numpy slicing would silently shorten a crop that ran past an edge.
        top, left = int(np.floor(box[0])), int(np.floor(box[1]))
        assert top + crop.shape[0] <= height and left + crop.shape[1] <= width


@FUZZ
@given(SIZES, SIZES, st.lists(st.tuples(st.lists(ANY_FLOAT, min_size=4, max_size=4), ANY_FLOAT),
                              max_size=12),
       st.floats(0.0, 1.0), st.integers(1, 20), st.floats(0.0, 2.0))
def test_select_regions_never_raises_and_keeps_boxes_inside(height, width, detections, min_score,
                                                           max_detections, padding):
    boxes = np.array([box for box, _ in detections], np.float32).reshape(-1, 4)
    scores = np.array([score for _, score in detections], np.float32)
    found = Detections(boxes, scores, np.ones(len(scores), np.int32))
    keep, pixels, dropped = select_regions(found, height, width, min_score=min_score,
                                           max_detections=max_detections, padding=padding)
    assert len(keep) == len(pixels) <= max_detections
    assert 0 <= dropped <= len(scores)
    assert np.all(np.isfinite(scores[keep])) and np.all(scores[keep] >= min_score)
    assert np.all(np.diff(scores[keep]) <= 0)  # best first
    assert np.all(np.isfinite(boxes[keep]))
    image = np.zeros((height, width, 3), np.uint8)
    for box in pixels:
        assert 0 <= box[0] < box[2] <= height and 0 <= box[1] < box[3] <= width
        assert crop_box(image, box).size > 0


@pytest.mark.parametrize("box", [
    [np.nan, 0, 1, 1], [0, 0, np.inf, 1], [-np.inf, -np.inf, np.inf, np.inf],
    [1e30, 1e30, -1e30, -1e30], [0.5, 0.5, 0.5, 0.5],
])
def test_non_finite_and_degenerate_boxes_are_dropped(box):
    found = Detections(np.array([box], np.float32), np.array([0.9], np.float32),
                       np.ones(1, np.int32))
    keep, _, dropped = select_regions(found, 10, 10, min_score=0.5, max_detections=5,
                                           padding=0.0)
    assert (len(keep), dropped) == (0, 1)
