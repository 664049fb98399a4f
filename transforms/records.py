"""Typed records that flow through the pipeline and the one Parquet schema that writes them."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import pyarrow as pa

__all__ = [
    "DETECTIONS_SCHEMA",
    "ERROR_STAGES",
    "MESSAGE_LIMIT",
    "METRICS_NAMESPACE",
    "IMAGES_SCHEMA",
    "STATUS_ERROR",
    "STATUS_OK",
    "Classification",
    "DecodedImage",
    "Detections",
    "ErrorStage",
    "DetectionRow",
    "ImageRegions",
    "ImageRow",
    "Region",
    "short_list",
    "short_message",
]

# Namespace of the job's own Beam counters and distributions (README, "Metrics").
METRICS_NAMESPACE = "beam_detect_classify"
STATUS_OK = "ok"
STATUS_ERROR = "error"


class ErrorStage(str, enum.Enum):
    """Where an image failed: the ``error_stage`` column of ``images``, in pipeline order."""

    READ = "read"
    DECODE = "decode"
    DETECT = "detect"
    CLASSIFY = "classify"


ERROR_STAGES = tuple(stage.value for stage in ErrorStage)
# The longest error message a row holds: enough for a person to act on, never a whole dump.
MESSAGE_LIMIT = 1000


def short_list(items: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` items, comma-separated, and how many more there are."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def short_message(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters (with an ellipsis when cut)."""
    text = str(text)
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"

# The public contract: add columns, never change or remove them (README, "Output").
DETECTIONS_SCHEMA = pa.schema(
    [
        pa.field("image_path", pa.string(), nullable=False),
        pa.field("roi_index", pa.int32(), nullable=False),
        pa.field("box_ymin", pa.float32(), nullable=False),
        pa.field("box_xmin", pa.float32(), nullable=False),
        pa.field("box_ymax", pa.float32(), nullable=False),
        pa.field("box_xmax", pa.float32(), nullable=False),
        pa.field("detector_class_id", pa.int32(), nullable=False),
        pa.field("detector_label", pa.string(), nullable=True),
        pa.field("detector_score", pa.float32(), nullable=False),
        pa.field("class_id", pa.int32(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("confidence", pa.float32(), nullable=False),
        pa.field("detector_model", pa.string(), nullable=False),
        pa.field("classifier_model", pa.string(), nullable=False),
        # Added with run records (columns are only ever added at the end).
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("fingerprint", pa.string(), nullable=False),
        pa.field("classified", pa.bool_(), nullable=False),
    ]
)

IMAGES_SCHEMA = pa.schema(
    [
        pa.field("image_path", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=True),
        pa.field("height", pa.int32(), nullable=True),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_stage", pa.string(), nullable=True),
        pa.field("error", pa.string(), nullable=True),
        pa.field("num_detections", pa.int32(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("fingerprint", pa.string(), nullable=False),
    ]
)


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    """An image decoded to RGB uint8 ``[H, W, 3]``."""

    path: str
    pixels: np.ndarray

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


@dataclasses.dataclass(frozen=True)
class Detections:
    """A detector's answer for one image, padding removed; or the error that replaced it."""

    boxes: np.ndarray  # float32 [N, 4] normalized ymin, xmin, ymax, xmax
    scores: np.ndarray  # float32 [N]
    classes: np.ndarray  # int32 [N], 1-based
    error: Optional[str] = None

    @classmethod
    def failed(cls, error: str) -> "Detections":
        empty = np.zeros((0,), np.float32)
        return cls(np.zeros((0, 4), np.float32), empty, empty.astype(np.int32), error)


@dataclasses.dataclass(frozen=True)
class Classification:
    """The classifier's answer for one region, or the error that replaced it."""

    class_id: int
    confidence: float
    error: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Region:
    """One detected region, cropped and resized to the classifier's input size."""

    image_path: str
    roi_index: int
    box: tuple[float, float, float, float]  # ymin, xmin, ymax, xmax in pixels
    detector_class_id: int
    detector_score: float
    # uint8 [h, w, 3], already the classifier's input size; None for a region that is not
    # classified (--classify_detector_classes).
    crop: Optional[np.ndarray]


@dataclasses.dataclass(frozen=True)
class ImageRegions:
    """One image's kept regions, which travel through ClassifyRegions together: the image's
    row is finished where its regions' answers are, with no join on the path, and the
    pipeline moves one element per image rather than one per region."""

    image_path: str
    width: int
    height: int
    regions: tuple[Region, ...]  # roi_index order

    @property
    def crops(self) -> list[np.ndarray]:
        """The crops to classify, in region order (regions without a crop are skipped)."""
        return [region.crop for region in self.regions if region.crop is not None]


@dataclasses.dataclass(frozen=True)
class DetectionRow:
    """One row of ``OUTPUT/detections``."""

    image_path: str
    roi_index: int
    box_ymin: float
    box_xmin: float
    box_ymax: float
    box_xmax: float
    detector_class_id: int
    detector_label: Optional[str]
    detector_score: float
    class_id: int
    label: str
    confidence: float
    detector_model: str
    classifier_model: str
    run_id: str = ""
    fingerprint: str = ""
    # False for a region of a detector class that --classify_detector_classes leaves out:
    # class_id -1, label "" and confidence NaN.
    classified: bool = True

    def to_dict(self) -> dict[str, Any]:
        # Every key is always present: Beam's Parquet sink raises KeyError on a missing key.
        # Shallow on purpose: dataclasses.asdict deep-copies, ~40x slower per row.
        return {name: getattr(self, name) for name in _DETECTION_FIELDS}


@dataclasses.dataclass(frozen=True)
class ImageRow:
    """One row of ``OUTPUT/images``: every input path appears exactly once."""

    image_path: str
    status: str
    width: Optional[int] = None
    height: Optional[int] = None
    error_stage: Optional[str] = None
    error: Optional[str] = None
    num_detections: int = 0

    def to_dict(self, *, run_id: str = "", fingerprint: str = "") -> dict[str, Any]:
        """The Parquet row; ``run_id`` and ``fingerprint`` are the run's, added when written."""
        row = {name: getattr(self, name) for name in _IMAGE_FIELDS}
        row["run_id"], row["fingerprint"] = run_id, fingerprint
        return row

    @classmethod
    def failed(cls, path: str, stage: ErrorStage, error: str, *, width: Optional[int] = None,
               height: Optional[int] = None) -> "ImageRow":
        return cls(image_path=path, status=STATUS_ERROR, width=width, height=height,
                   error_stage=ErrorStage(stage).value, error=short_message(error))


_DETECTION_FIELDS = tuple(field.name for field in dataclasses.fields(DetectionRow))
_IMAGE_FIELDS = tuple(field.name for field in dataclasses.fields(ImageRow))
