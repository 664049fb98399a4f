"""Pure image functions on numpy arrays: decode, box conversion, clipping, cropping, resizing."""

from __future__ import annotations

import struct
from typing import Optional

import cv2
import numpy as np

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "PREPROCESS_MODES",
    "DecodeError",
    "clip_boxes",
    "crop_box",
    "decode_image",
    "image_size_from_header",
    "normalized_to_pixels",
    "pad_boxes",
    "preprocess",
    "resize_to",
    "valid_boxes",
]

# 100 megapixels: a 10000x10000 RGB image is 300 MB decoded, well inside one worker's memory.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000

# uint8 -> float32 as x * scale + offset.
PREPROCESS_MODES: dict[str, tuple[float, float]] = {
    "unit": (1.0 / 255.0, 0.0),
    "raw": (1.0, 0.0),
    "symmetric": (1.0 / 127.5, -1.0),
}

_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class DecodeError(ValueError):
    """An input could not be turned into an RGB image; the message says why."""


def _jpeg_size(data: bytes) -> Optional[tuple[int, int]]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in _JPEG_SOF_MARKERS:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + length
    return None


def _webp_size(data: bytes) -> Optional[tuple[int, int]]:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def image_size_from_header(data: bytes) -> Optional[tuple[int, int]]:
    """Returns ``(width, height)`` read from a PNG, JPEG, GIF, BMP or WebP header, else None.

    Only the first bytes are parsed, so a decompression bomb is caught before it is decoded.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    return None


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decodes encoded image bytes to a contiguous RGB uint8 ``[H, W, 3]`` array.

    Grayscale, alpha, palette, CMYK and 16-bit inputs all come out as 8-bit RGB, and EXIF
    orientation is applied (OpenCV's ``IMREAD_COLOR_RGB``).

    Raises:
        DecodeError: empty input, a header over ``max_pixels``, or bytes OpenCV cannot decode.
    """
    if not data:
        raise DecodeError("file is empty (0 bytes)")
    size = image_size_from_header(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise DecodeError(
            f"image header says {size[0]}x{size[1]} = {size[0] * size[1]} pixels, over the "
            f"limit of {max_pixels} (raise --max_image_pixels to process it)")
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        pixels = cv2.imdecode(buffer, cv2.IMREAD_COLOR_RGB)
    except cv2.error as exc:
        raise DecodeError(f"OpenCV could not decode it: {str(exc).strip()}") from exc
    if pixels is None or pixels.size == 0:
        kind = "truncated or corrupt image" if size is not None else "not a supported image format"
        raise DecodeError(f"{kind}: OpenCV could not decode {len(data)} bytes")
    if pixels.shape[0] * pixels.shape[1] > max_pixels:
        raise DecodeError(
            f"decoded image is {pixels.shape[1]}x{pixels.shape[0]} pixels, over the limit of "
            f"{max_pixels} (raise --max_image_pixels to process it)")
    return np.ascontiguousarray(pixels)


def normalized_to_pixels(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scales normalized ``[ymin, xmin, ymax, xmax]`` boxes ``[N, 4]`` to pixel coordinates."""
    scale = np.array([height, width, height, width], dtype=np.float32)
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * scale


def pad_boxes(boxes: np.ndarray, padding: float) -> np.ndarray:
    """Grows each pixel box by ``padding`` times its height/width on each side."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if padding == 0:
        return boxes
    dy = (boxes[:, 2] - boxes[:, 0]) * padding
    dx = (boxes[:, 3] - boxes[:, 1]) * padding
    return np.stack([boxes[:, 0] - dy, boxes[:, 1] - dx, boxes[:, 2] + dy, boxes[:, 3] + dx], axis=1)


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Clips pixel boxes ``[N, 4]`` to the image; NaN stays NaN (``valid_boxes`` drops it)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    upper = np.array([height, width, height, width], dtype=np.float32)
    return np.minimum(np.maximum(boxes, 0.0), upper)


def valid_boxes(boxes: np.ndarray) -> np.ndarray:
    """Boolean mask of boxes that are finite and have positive height and width."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    finite = np.all(np.isfinite(boxes), axis=1)
    with np.errstate(invalid="ignore"):
        positive = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return finite & positive


def crop_box(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Crops a clipped, valid pixel box: rows ``floor(ymin)..ceil(ymax)``, same for columns."""
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    top, left = int(np.floor(ymin)), int(np.floor(xmin))
    bottom = max(int(np.ceil(ymax)), top + 1)
    right = max(int(np.ceil(xmax)), left + 1)
    return image[top:bottom, left:right]


def resize_to(crop: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes to ``(height, width)``: area averaging when shrinking, bilinear when enlarging."""
    if crop.shape[0] == height and crop.shape[1] == width:
        return np.ascontiguousarray(crop)
    shrinking = crop.shape[0] * crop.shape[1] > height * width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(crop, (width, height), interpolation=interpolation)


def preprocess(batch: np.ndarray, mode: str) -> np.ndarray:
    """Turns a uint8 batch into float32 in the classifier's input range (``PREPROCESS_MODES``)."""
    try:
        scale, offset = PREPROCESS_MODES[mode]
    except KeyError:
        raise ValueError(
            f"unknown preprocess mode {mode!r}; choose one of {sorted(PREPROCESS_MODES)}") from None
    out = np.asarray(batch, dtype=np.float32) * np.float32(scale)
    if offset:
        out += np.float32(offset)
    return out
