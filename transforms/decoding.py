"""Decoding: format sniffing, header pixel counts and bytes to RGB pixels (pure functions)."""

from __future__ import annotations

import os
import struct
from typing import Optional

import cv2
import numpy as np

from transforms import DEFAULT_MAX_IMAGE_PIXELS

__all__ = [
    "ACCEPTED_FORMATS",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DecodeError",
    "decoder_pixel_limit",
    "decode_image",
    "encode_png",
    "image_format",
    "image_size_from_header",
]

# What the job decodes, recognised by content (``image_format``). Anything else OpenCV would
# sniff and decode (Radiance HDR, PFM, OpenEXR, JPEG 2000, Sun raster, ...) is refused before
# any decoder sees it, whatever the file is named.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WebP", "BMP", "TIFF", "GIF", "PNM")

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


def _tiff_size(data: bytes) -> Optional[tuple[int, int]]:
    order = "<" if data[:2] == b"II" else ">"
    (magic,) = struct.unpack(order + "H", data[2:4])
    if magic == 42:  # classic TIFF: 4-byte offsets, 12-byte entries
        count_fmt, entry_size, value_at = "H", 12, 8
        (offset,) = struct.unpack(order + "I", data[4:8])
    elif magic == 43 and len(data) >= 16:  # BigTIFF: 8-byte offsets, 20-byte entries
        count_fmt, entry_size, value_at = "Q", 20, 12
        (offset,) = struct.unpack(order + "Q", data[8:16])
    else:
        return None
    count_size = struct.calcsize(count_fmt)
    if offset + count_size > len(data):
        return None
    (count,) = struct.unpack(order + count_fmt, data[offset:offset + count_size])
    size: dict[int, int] = {}
    pos = offset + count_size
    for _ in range(min(count, 4096)):
        if pos + entry_size > len(data):
            break
        tag, kind = struct.unpack(order + "HH", data[pos:pos + 4])
        if tag in (256, 257) and kind in (3, 4, 16):  # ImageWidth, ImageLength: SHORT/LONG/LONG8
            fmt = {3: "H", 4: "I", 16: "Q"}[kind]
            (value,) = struct.unpack_from(order + fmt, data, pos + value_at)
            # A tag listed twice: keep the largest, whichever one the decoder goes by.
            size[tag] = max(value, size.get(tag, 0))
        pos += entry_size
    if 256 in size and 257 in size:
        return size[256], size[257]
    return None


def _pnm_size(data: bytes) -> Optional[tuple[int, int]]:
    if data[1:2] == b"7":  # PAM: WIDTH and HEIGHT lines before ENDHDR
        header = data[:1024].split(b"ENDHDR", 1)[0]
        fields = dict(line.split(None, 1) for line in header.splitlines()[1:]
                      if len(line.split(None, 1)) == 2)
        try:
            return int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])
        except (KeyError, ValueError):
            return None
    numbers: list[int] = []
    for line in data[2:1024].splitlines():
        for token in line.split(b"#", 1)[0].split():
            if not token.isdigit():
                return None
            numbers.append(int(token))
            if len(numbers) == 2:
                return numbers[0], numbers[1]
    return None


def image_format(data: bytes) -> Optional[str]:
    """The image format named by the first bytes (``PNG``, ``JPEG``, ``GIF``, ``BMP``,
    ``WebP``, ``TIFF``, ``PNM``), or None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:2] == b"\xff\xd8":
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if data[:1] == b"P" and data[1:2] in b"1234567" and data[2:3].isspace():
        return "PNM"
    return None


def image_size_from_header(data: bytes) -> Optional[tuple[int, int]]:
    """Returns ``(width, height)`` read from a PNG, JPEG, GIF, BMP, WebP, TIFF (first page) or
    PNM header, else None.

    Only the first bytes are parsed, so a decompression bomb is caught before it is decoded.
    Other formats OpenCV reads (JPEG 2000, OpenEXR, Radiance HDR, Sun raster) are guarded by
    OpenCV's own limit (``CV_IO_MAX_IMAGE_PIXELS``, 2**30 pixels) and the check after decoding.
    """
    kind = image_format(data)
    try:
        if kind == "PNG" and len(data) >= 24:
            return struct.unpack(">II", data[16:24])
        if kind == "JPEG":
            return _jpeg_size(data)
        if kind == "GIF" and len(data) >= 10:
            return struct.unpack("<HH", data[6:10])
        if kind == "BMP" and len(data) >= 26:
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        if kind == "WebP":
            return _webp_size(data)
        if kind == "TIFF":
            return _tiff_size(data)
        if kind == "PNM":
            return _pnm_size(data)
    except struct.error:  # a header cut short
        return None
    return None


def _not_an_image_hint(data: bytes) -> str:
    head = data[:16]
    for magic, name in ((b"#?RADIANCE", "a Radiance HDR image"),
                        (b"#?RGBE", "a Radiance HDR image"),
                        (b"PF\n", "a PFM float image"), (b"Pf\n", "a PFM float image"),
                        (b"v/1\x01", "an OpenEXR image"),
                        (b"\x00\x00\x00\x0cjP", "a JPEG 2000 image"),
                        (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive"),
                        (b"\x1f\x8b", "gzip data"), (b"<", "HTML or XML text"),
                        (b"{", "JSON text")):
        if head.lstrip().startswith(magic):
            return f"it looks like {name}"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "it looks like text"
    return "its first bytes match no image format"  # never quote a file's bytes


def decoder_pixel_limit() -> int:
    """OpenCV's own pixel limit in this process (``OPENCV_IO_MAX_IMAGE_PIXELS`` as it was
    when cv2 was imported; 2**30 when unset or not a number, as OpenCV does)."""
    try:
        return int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", ""))
    except ValueError:
        return 1 << 30


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decodes encoded image bytes to a contiguous RGB uint8 ``[H, W, 3]`` array.

    Grayscale, alpha, palette, CMYK and 16-bit inputs all come out as 8-bit RGB, and EXIF
    orientation is applied (OpenCV's ``IMREAD_COLOR_RGB``).

    Two guards before any pixel is allocated: OpenCV's own limit (the decoder's reading of
    the header, set in every process by ``transforms``), and this run's ``max_pixels`` from
    our header parser (which skips decoding when the header is honest). The decoded size is
    checked against ``max_pixels`` again, exactly.

    Raises:
        DecodeError: empty input, a format the job does not accept, a header over
            ``max_pixels``, or bytes OpenCV cannot decode.
    """
    if not data:
        raise DecodeError("file is empty (0 bytes)")
    kind = image_format(data)
    if kind is None:
        raise DecodeError(
            f"not a supported image format ({_not_an_image_hint(data)}); expected "
            f"{', '.join(ACCEPTED_FORMATS[:-1])} or {ACCEPTED_FORMATS[-1]}")
    size = image_size_from_header(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise DecodeError(
            f"{kind} header says {size[0]}x{size[1]} = {size[0] * size[1]} pixels, over the "
            f"limit of {max_pixels} (a decompression bomb, or raise --max_image_pixels to "
            "process it)")
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        pixels = cv2.imdecode(buffer, cv2.IMREAD_COLOR_RGB)
    except cv2.error as exc:
        if "CV_IO_MAX_IMAGE_PIXELS" in str(exc):
            raise DecodeError(
                f"{kind} is larger than the decoder's limit of {decoder_pixel_limit()} pixels "
                "(OPENCV_IO_MAX_IMAGE_PIXELS in the worker's environment; --max_image_pixels "
                "sets it for local runs)") from exc
        raise DecodeError(f"OpenCV could not decode it: {str(exc).strip()}") from exc
    if pixels is None or pixels.size == 0:
        raise DecodeError(f"truncated or corrupt {kind}: OpenCV could not decode its "
                          f"{len(data)} bytes (copy or export the file again)")
    if pixels.shape[0] * pixels.shape[1] > max_pixels:
        raise DecodeError(
            f"decoded image is {pixels.shape[1]}x{pixels.shape[0]} pixels, over the limit of "
            f"{max_pixels} (raise --max_image_pixels to process it)")
    return np.ascontiguousarray(pixels)


def encode_png(image: np.ndarray, *, compression: int = 3) -> bytes:
    """Lossless PNG bytes of an RGB uint8 ``[H, W, 3]`` array (any strides). ``compression``
    is zlib's level; 0 also turns PNG's row filters off: the fastest, for bytes that never
    leave the process."""
    bgr = np.ascontiguousarray(image[..., ::-1])  # OpenCV writes BGR
    params = [cv2.IMWRITE_PNG_COMPRESSION, int(compression)]
    if compression == 0:
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    ok, encoded = cv2.imencode(".png", bgr, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {list(image.shape)} image as PNG")
    return encoded.tobytes()
