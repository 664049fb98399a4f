"""What the graph needs, already checked: one group per step of ``build_pipeline``.

``beam_pipeline.planning`` builds it from the options (whose defaults, in
``beam_pipeline.options``, are the only defaults) and from what validation proved about the
models; ``beam_pipeline.commits`` derives one per commit step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from transforms.inputs import InputSpec
from transforms.tiles import TilingConfig

__all__ = ["ClassifyConfig", "DetectConfig", "JobConfig", "RunConfig", "SelectConfig"]


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    """SelectPaths: which listed paths this run (or this commit step) processes."""

    input: InputSpec
    sample: float = 1.0
    done_tables: tuple[str, ...] = ()  # images-table globs of complete earlier runs to skip
    input_paths: Optional[tuple[str, ...]] = None  # a commit step's own paths, listed already


@dataclasses.dataclass(frozen=True)
class DetectConfig:
    """DecodeImages, DetectObjects and CropRegions."""

    detector_model: str
    max_image_pixels: int
    min_score: float
    max_detections: int
    crop_padding: float
    crop_size: tuple[int, int]  # the classifier's input height, width
    model_copies: Optional[int] = None
    tiling: Optional[TilingConfig] = None
    box_format: str = "normalized"  # proved by validation (transforms.box_formats)
    classify_detector_classes: Optional[frozenset[int]] = None  # None: classify every class


@dataclasses.dataclass(frozen=True)
class ClassifyConfig:
    """ClassifyRegions and ToRows."""

    classifier_model: str
    labels: tuple[str, ...]
    batch_size: int
    preprocess: str
    safe_mode: bool = True
    model_copies: Optional[int] = None
    detector_labels: Optional[dict[int, str]] = None


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """WriteTables and FinishRun: where the rows go and what the run record says."""

    output: str
    run_id: str
    fingerprint: str
    record: Mapping[str, Any]  # the run record's fields known before the run
    num_shards: int = 0
    max_error_fraction: Optional[float] = None
    fingerprint_parts: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Committed progress (beam_pipeline.commits): images per step (0 = one step, no commits);
    # a step's part-file prefix and commit index, and its commit record's header.
    commit_every: int = 0
    part_prefix: str = "part"
    commit_index: Optional[int] = None
    commit_header: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Paths the launcher found done (a local run that selects in the launcher): added to what
    # the graph itself skipped.
    skipped_in_launcher: int = 0


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Everything the graph needs, grouped by the step that uses it."""

    select: SelectConfig
    detect: DetectConfig
    classify: ClassifyConfig
    run: RunConfig
    progress_folder: Optional[str] = None  # local runs: where workers count progress
