"""Fail-fast checks: every configuration mistake is caught before the pipeline starts."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import NamedTuple, Optional

from beam_pipeline.commits import commit_every, read_commits, resumable
from beam_pipeline.errors import ConfigError
from beam_pipeline.input_checks import check_input
from beam_pipeline.model_checks import (
    check_models,
    check_models_exist,
    classifier_labels,
    detector_labels,
    min_score,
    parse_detector_classes,
)
from beam_pipeline.options import DetectClassifyOptions
from beam_pipeline.output_checks import check_output, check_output_location
from beam_pipeline.storage import storage_problem
from transforms.inputs import InputSpec
from transforms.paths import local_path

__all__ = ["Checked", "ConfigError", "check_input", "removing_created_output", "validate"]

# Smaller tiles than this only multiply detector calls.
MIN_TILE_SIZE = 32


def _check_numbers(opts: DetectClassifyOptions) -> None:
    if opts.min_score is not None and not 0.0 <= opts.min_score <= 1.0:
        raise ConfigError(f"--min_score={opts.min_score} must be between 0 and 1")
    if opts.max_detections < 1:
        raise ConfigError(f"--max_detections={opts.max_detections} must be at least 1")
    if opts.crop_padding < 0:
        raise ConfigError(f"--crop_padding={opts.crop_padding} must be 0 or more")
    if opts.classifier_batch_size < 1:
        raise ConfigError(f"--classifier_batch_size={opts.classifier_batch_size} must be >= 1")
    if opts.max_image_pixels < 1:
        raise ConfigError(f"--max_image_pixels={opts.max_image_pixels} must be >= 1")
    if opts.model_copies < 0 or opts.num_shards < 0:
        raise ConfigError("--model_copies and --num_shards must be 0 (the default) or more")
    if opts.tile_size != 0 and opts.tile_size < MIN_TILE_SIZE:
        raise ConfigError(f"--tile_size={opts.tile_size} must be 0 (off) or at least "
                          f"{MIN_TILE_SIZE} pixels")
    if not 0.0 <= opts.tile_overlap < 0.5:
        raise ConfigError(f"--tile_overlap={opts.tile_overlap} must be in [0, 0.5)")
    if opts.tile_batch_size < 1:
        raise ConfigError(f"--tile_batch_size={opts.tile_batch_size} must be at least 1")
    if not 0.0 < opts.sample <= 1.0:
        raise ConfigError(f"--sample={opts.sample} must be in (0, 1]: the fraction of paths "
                          "to process")
    if opts.max_error_fraction is not None and not 0.0 <= opts.max_error_fraction <= 1.0:
        raise ConfigError(f"--max_error_fraction={opts.max_error_fraction} must be between "
                          "0 and 1")


class Checked(NamedTuple):
    """What the checks proved or read, for ``beam_pipeline.planning`` to build the config."""

    input: InputSpec
    labels: tuple[str, ...]
    labels_path: str
    detector_labels: Optional[dict[int, str]]
    detector_description: str  # the export variant and its box convention, in words
    box_format: str  # the convention the probe proved (transforms.box_formats)
    crop_size: tuple[int, int]  # the classifier's input height, width
    min_score: float
    min_score_source: str
    classify_classes: Optional[frozenset[int]]
    commit_every: int  # images per commit step; 0 = one step, no commits
    commits: tuple[dict, ...]  # the commit records of an unfinished run in --output


def validate(opts: DetectClassifyOptions) -> Checked:
    """Checks options, models, labels and output before any work; changes nothing but a
    probe file in ``--output`` (and the folder, when it had to be made to prove it writable).

    A local ``--output`` folder that the checks created is removed again when a later check
    fails, so a mistake leaves nothing behind.

    Raises:
        ConfigError: with one line naming the problem and the fix.
    """
    with removing_created_output(opts.output):
        return _validate(opts)


@contextlib.contextmanager
def removing_created_output(output: str) -> Iterator[None]:
    """Removes a local ``output`` folder created inside the block, if still empty, when the
    block raises ConfigError (the launcher wraps validation and planning in it)."""
    local = local_path(output)
    existed = local is None or os.path.exists(local)
    try:
        yield
    except ConfigError:
        if not existed and os.path.isdir(local) and not os.listdir(local):
            os.rmdir(local)
        raise


def _validate(opts: DetectClassifyOptions) -> Checked:
    _check_numbers(opts)
    problem = storage_problem(opts)  # bounded: before anything waits on Beam's retries
    if problem is not None:
        raise ConfigError(problem)
    spec = check_input(opts.input, recursive=opts.recursive)
    check_models_exist(opts)
    label_map = detector_labels(opts)
    labels_path, labels = classifier_labels(opts)
    check_output_location(opts.output, spec)
    every, commits = _check_commits_and_output(opts)
    models = check_models(opts, labels, labels_path)
    score, score_source = min_score(opts)
    return Checked(
        input=spec, labels=tuple(labels), labels_path=labels_path,
        detector_labels=label_map, detector_description=models.detector_description,
        box_format=models.box_format, crop_size=models.crop_size,
        min_score=score, min_score_source=score_source,
        classify_classes=parse_detector_classes(opts.classify_detector_classes, label_map),
        commit_every=every, commits=tuple(commits))


def _check_commits_and_output(opts: DetectClassifyOptions) -> tuple[int, list[dict]]:
    """Images per commit step and the commit records of an unfinished run to resume; then
    ``--output`` checked for this run (an earlier run refused without ``--overwrite``)."""
    if opts.commit_every is not None and opts.commit_every < 0:
        raise ConfigError(f"--commit_every={opts.commit_every} must be 0 (off) or a number "
                          "of images")
    every = commit_every(opts)
    try:
        commits = read_commits(opts.output) if every and not opts.overwrite else []
    except ValueError as exc:
        raise ConfigError(f"--output {opts.output}: {exc}; pass --overwrite to start afresh"
                          ) from exc
    check_output(opts.output, overwrite=opts.overwrite,
                 resume=bool(every) and not opts.overwrite and resumable(opts.output))
    return every, commits
