"""Pure image functions: no Beam, no TensorFlow."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from transforms.boxes import (
    clip_boxes,
    crop_box,
    normalized_to_pixels,
    pad_boxes,
    resize_to,
    valid_boxes,
)
from transforms.classification import preprocess
from transforms.decoding import (
    DecodeError,
    decode_image,
    image_size_from_header,
)
from transforms.records import Detections
from transforms.regions import select_regions


def _encode(rgb: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def test_normalized_to_pixels_scales_y_by_height_and_x_by_width():
    boxes = normalized_to_pixels(np.array([[0.1, 0.2, 0.5, 1.0]]), height=100, width=200)
    np.testing.assert_allclose(boxes, [[10, 40, 50, 200]])


def test_pad_boxes_grows_each_side_by_fraction():
    padded = pad_boxes(np.array([[10, 20, 30, 60]], np.float32), 0.25)
    np.testing.assert_allclose(padded, [[5, 10, 35, 70]])
    np.testing.assert_allclose(pad_boxes(np.array([[1, 2, 3, 4]]), 0.0), [[1, 2, 3, 4]])


def test_clip_boxes_keeps_boxes_inside_image():
    clipped = clip_boxes(np.array([[-5, -1, 50, 300]], np.float32), height=40, width=200)
    np.testing.assert_allclose(clipped, [[0, 0, 40, 200]])


@pytest.mark.parametrize("box, valid", [
    ([0, 0, 10, 10], True),
    ([5, 5, 5, 10], False),        # zero height
    ([10, 0, 5, 10], False),       # inverted
    ([np.nan, 0, 5, 10], False),   # NaN
    ([0, 0, np.inf, 10], False),   # inf
])
def test_valid_boxes(box, valid):
    assert valid_boxes(np.array([box], np.float32)).tolist() == [valid]


def test_crop_box_uses_floor_and_ceil():
    image = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    crop = crop_box(image, np.array([1.5, 2.2, 4.1, 6.0]))
    np.testing.assert_array_equal(crop, image[1:5, 2:6])


def test_crop_box_of_sub_pixel_box_is_one_pixel():
    image = np.zeros((10, 10, 3), np.uint8)
    assert crop_box(image, np.array([3.2, 3.2, 3.4, 3.4])).shape == (1, 1, 3)


def test_resize_to_shrinks_with_area_and_enlarges():
    checker = np.indices((8, 8)).sum(axis=0) % 2 * 255
    image = np.repeat(checker[..., None], 3, axis=2).astype(np.uint8)
    small = resize_to(image, 4, 4)
    assert small.shape == (4, 4, 3)
    assert np.all(small == 128) or np.all(np.abs(small.astype(int) - 128) <= 1)  # area average
    assert resize_to(image[:2, :2], 6, 5).shape == (6, 5, 3)
    same = resize_to(image, 8, 8)
    np.testing.assert_array_equal(same, image)


@pytest.mark.parametrize("mode, low, high", [
    ("unit", 0.0, 1.0), ("raw", 0.0, 255.0), ("symmetric", -1.0, 1.0)])
def test_preprocess_modes(mode, low, high):
    out = preprocess(np.array([0, 255], np.uint8), mode)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [low, high], atol=1e-6)


def test_preprocess_rejects_unknown_mode():
    with pytest.raises(ValueError, match="unknown preprocess mode"):
        preprocess(np.zeros(1, np.uint8), "imagenet")


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp"])
def test_decode_image_gives_rgb_and_header_size(ext):
    rgb = np.zeros((30, 50, 3), np.uint8)
    rgb[..., 0] = 200  # red
    data = _encode(rgb, ext)
    assert image_size_from_header(data) == (50, 30)
    decoded = decode_image(data)
    assert decoded.shape == (30, 50, 3) and decoded.dtype == np.uint8
    assert decoded[..., 0].mean() > 150 and decoded[..., 2].mean() < 50


def test_decode_image_converts_grayscale_and_16_bit():
    gray16 = np.full((6, 4), 65535, np.uint16)
    ok, data = cv2.imencode(".png", gray16)
    decoded = decode_image(data.tobytes())
    assert decoded.shape == (6, 4, 3) and decoded.dtype == np.uint8
    assert decoded.min() == 255


def test_decode_image_refuses_bomb_from_header():
    data = _encode(np.zeros((20, 20, 3), np.uint8), ".png")
    with pytest.raises(DecodeError, match="over the limit of 100"):
        decode_image(data, max_pixels=100)


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"hello, world", "not a supported image format"),
])
def test_decode_image_errors(data, message):
    with pytest.raises(DecodeError, match=message):
        decode_image(data)


def test_select_regions_thresholds_sorts_clips_and_counts_degenerate():
    detections = Detections(
        boxes=np.array([[0.0, 0.0, 0.5, 0.5],    # kept, second
                        [0.2, 0.2, 0.2, 0.4],    # zero height: degenerate
                        [0.5, 0.5, 1.5, 1.5],    # kept first, clipped
                        [0.1, 0.1, 0.2, 0.2]],   # below threshold
                       np.float32),
        scores=np.array([0.6, 0.9, 0.95, 0.1], np.float32),
        classes=np.array([1, 1, 2, 1], np.int32))
    keep, boxes, dropped = select_regions(detections, 10, 20, min_score=0.5,
                                          max_detections=10, padding=0.0)
    assert keep.tolist() == [2, 0]
    np.testing.assert_allclose(boxes, [[5, 10, 10, 20], [0, 0, 5, 10]])
    assert dropped == 1
    keep, _, _ = select_regions(detections, 10, 20, min_score=0.5, max_detections=1,
                                padding=0.0)
    assert keep.tolist() == [2]
