"""Pictures for the report: crops and whole images with their boxes, cut from the source images
(any Beam filesystem) with the runtime's own decode and crop functions, each image read once;
a missing or undecodable image becomes a placeholder that says why."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterable

import cv2
import numpy as np

from beam_pipeline.report.data import Crop
from transforms.boxes import clip_boxes, crop_box, resize_to
from transforms.decoding import decode_image, encode_png
from transforms.records import short_message

__all__ = [
    "Picture",
    "cut_crop",
    "data_uri",
    "draw_boxes",
    "load_image",
    "placeholder",
    "render_pictures",
]

CROP_SIZE = 96  # longest side of a crop in the gallery, pixels
IMAGE_SIZE = 480  # longest side of a whole image
REASON_LIMIT = 200  # characters of an error quoted under a placeholder
_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (128, 128, 0), (0, 0, 128)]


@dataclasses.dataclass(frozen=True)
class Picture:
    """An encoded picture for the page, or a placeholder with the reason it stands in."""

    data: bytes
    mime: str
    error: str | None = None


def load_image(path: str) -> tuple[np.ndarray | None, str | None]:
    """Reads and decodes ``path`` to RGB; ``(None, reason)`` when that fails."""
    from apache_beam.io.filesystems import FileSystems

    from transforms import DEFAULT_MAX_IMAGE_PIXELS
    from transforms.paths import local_file_problem
    from transforms.reading import max_file_bytes, read_at_most

    problem = local_file_problem(path)  # a FIFO or device put where an image was: no hang
    if problem is not None:
        return None, f"cannot read: {problem}"
    limit = max_file_bytes(DEFAULT_MAX_IMAGE_PIXELS)
    try:
        with FileSystems.open(path, mime_type="application/octet-stream",
                              compression_type="uncompressed") as handle:
            data = read_at_most(handle, limit)
        if len(data) > limit:
            return None, f"cannot read: file is over {limit} bytes"
    except Exception as exc:  # noqa: BLE001 (each filesystem raises its own errors)
        return None, f"cannot read: {type(exc).__name__}: {short_message(exc, REASON_LIMIT)}"
    try:
        return decode_image(data), None
    except Exception as exc:  # noqa: BLE001 (a placeholder, never a crash)
        return None, f"cannot decode: {short_message(exc, REASON_LIMIT)}"


def _encode_jpeg(rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return encoded.tobytes()


def data_uri(picture: Picture) -> str:
    return f"data:{picture.mime};base64,{base64.b64encode(picture.data).decode('ascii')}"


def _fit(height: int, width: int, longest: int) -> tuple[int, int]:
    scale = longest / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def placeholder(reason: str, size: int = CROP_SIZE) -> Picture:
    """A grey square with a cross: the caption beside it carries ``reason``."""
    image = np.full((size, size, 3), 220, np.uint8)
    cv2.line(image, (0, 0), (size - 1, size - 1), (160, 160, 160), 2)
    cv2.line(image, (0, size - 1), (size - 1, 0), (160, 160, 160), 2)
    return Picture(encode_png(image), "image/png", reason)


def cut_crop(image: np.ndarray, box: tuple[float, float, float, float],
             longest: int | None = CROP_SIZE) -> np.ndarray:
    """The region as the job cut it (box clipped to the image), scaled so its longest side is
    ``longest`` (``None``: native size)."""
    clipped = clip_boxes(np.asarray(box, np.float32), image.shape[0], image.shape[1])[0]
    crop = crop_box(image, clipped)
    if crop.size == 0:
        raise ValueError(f"box {box} is outside the {image.shape[1]}x{image.shape[0]} image")
    if longest is None:
        return np.ascontiguousarray(crop)
    return resize_to(crop, *_fit(crop.shape[0], crop.shape[1], longest))


def draw_boxes(image: np.ndarray, crops: Iterable[Crop], longest: int = IMAGE_SIZE) -> np.ndarray:
    """The image scaled to ``longest`` with each box drawn and labelled
    ``label confidence``."""
    height, width = _fit(image.shape[0], image.shape[1], longest)
    scale = height / image.shape[0]
    canvas = resize_to(image, height, width).copy()
    labels: dict[str, int] = {}
    for crop in crops:
        color = _PALETTE[labels.setdefault(crop.label, len(labels)) % len(_PALETTE)]
        y0, x0, y1, x1 = (round(v * scale) for v in crop.box)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), color, 2)
        text = f"{crop.label} {crop.confidence:.2f}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        ty = y0 - 3 if y0 - th - 4 >= 0 else min(y1 + th + 3, height - 2)
        cv2.rectangle(canvas, (x0, ty - th - 2), (x0 + tw + 2, ty + 2), color, -1)
        cv2.putText(canvas, text, (x0 + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255),
                    1, cv2.LINE_AA)
    return canvas


def render_pictures(crops: Iterable[Crop], whole: dict[str, list[Crop]]
                    ) -> tuple[dict[Crop, Picture], dict[str, Picture]]:
    """Crop pictures keyed by crop and whole pictures keyed by path, reading each source image
    once and only those shown."""
    wanted: dict[str, list[Crop]] = {}
    for crop in crops:
        wanted.setdefault(crop.image_path, []).append(crop)
    crop_pictures: dict[Crop, Picture] = {}
    whole_pictures: dict[str, Picture] = {}
    for path in sorted(wanted.keys() | whole.keys()):
        image, reason = load_image(path)
        for crop in wanted.get(path, []):
            if image is None:
                crop_pictures[crop] = placeholder(reason)
                continue
            try:
                crop_pictures[crop] = Picture(encode_png(cut_crop(image, crop.box)), "image/png")
            except ValueError as exc:
                crop_pictures[crop] = placeholder(str(exc))
        if path in whole:
            whole_pictures[path] = (
                Picture(_encode_jpeg(draw_boxes(image, whole[path])), "image/jpeg")
                if image is not None else placeholder(reason, IMAGE_SIZE // 3))
    return crop_pictures, whole_pictures
