"""Fail-fast checks: every configuration mistake is caught before the pipeline starts."""

from __future__ import annotations

import os
import uuid
from typing import Optional

from apache_beam.io.filesystems import FileSystems

from beam_pipeline.options import DetectClassifyOptions
from beam_pipeline.pipeline import JobConfig
from transforms.labels import read_label_map, read_labels
from transforms.model_files import (
    DEFAULT_CLASSIFIER,
    DEFAULT_CLASSIFIER_LABELS,
    DEFAULT_DETECTOR,
    DEFAULT_DETECTOR_LABEL_MAP,
    is_local_path,
    local_model_path,
    model_exists,
    resolve_model_path,
)
from transforms.reading import (
    IMAGE_EXTENSIONS,
    MANIFEST_EXTENSIONS,
    InputSpec,
    first_manifest_path,
    resolve_input,
)
from transforms.writing import SUCCESS_MARKER, TABLES, delete_tables

__all__ = ["ConfigError", "check_input", "check_output", "validate"]


class ConfigError(ValueError):
    """A configuration mistake; the message names the problem and the fix."""


def _exists(path: str) -> bool:
    return model_exists(path)


def _check_numbers(opts: DetectClassifyOptions) -> None:
    if not 0.0 <= opts.min_score <= 1.0:
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


def check_output(output: str, *, overwrite: bool) -> None:
    """Refuses an output folder that holds an earlier run's tables, complete or not (unless
    ``overwrite``) and proves the folder is writable by writing and deleting a probe file.

    Nothing is deleted here: ``validate`` deletes the earlier tables only once every other check
    has passed, so a configuration mistake never costs an earlier run's results.
    """
    existing = [FileSystems.join(output, t) for t in TABLES
                if FileSystems.match([FileSystems.join(output, t, "*")])[0].metadata_list]
    if existing and not overwrite:
        complete = FileSystems.exists(FileSystems.join(output, SUCCESS_MARKER))
        state = "finished" if complete else f"unfinished, no {SUCCESS_MARKER}"
        raise ConfigError(f"--output {output} already holds a run's tables ({state}: "
                          f"{', '.join(existing)}); pass --overwrite to replace them, or "
                          "choose another --output")
    probe = FileSystems.join(output, f".write-probe-{uuid.uuid4().hex}")
    try:
        if is_local_path(output):
            os.makedirs(output, exist_ok=True)
        with FileSystems.create(probe) as handle:
            handle.write(b"ok")
        FileSystems.delete([probe])
    except Exception as exc:  # pylint: disable=broad-except
        raise ConfigError(f"--output {output} is not writable ({type(exc).__name__}: {exc}); "
                          "fix its permissions or choose another folder") from exc


_FOLDER_SAMPLE = 10_000


def check_input(opts_input: str) -> InputSpec:
    """Resolves ``--input`` and checks that it names at least one image (a manifest: that it
    exists and names at least one path), so a typo fails here rather than as an empty run."""
    if not opts_input.strip():
        raise ConfigError("--input is empty; pass a glob, a folder or a manifest file")
    if opts_input.lower().endswith(MANIFEST_EXTENSIONS) and not FileSystems.exists(opts_input):
        raise ConfigError(f"--input manifest {opts_input} does not exist; check the path")
    try:
        spec = resolve_input(opts_input)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"--input {opts_input}: {str(exc).splitlines()[0]}") from exc
    if spec.kind == "manifest":
        if not FileSystems.exists(spec.location):
            raise ConfigError(f"--input manifest {spec.location} does not exist; check the path")
        if first_manifest_path(spec) is None:
            raise ConfigError(f"--input manifest {spec.location} names no paths (only blank or "
                              "# lines); put one image path per line")
        return spec
    # A folder is listed up to _FOLDER_SAMPLE names, enough to find an image in any real one.
    found = FileSystems.match([spec.location], limits=[_FOLDER_SAMPLE if spec.only_images else 1])
    paths = [m.path for m in found[0].metadata_list]
    if spec.only_images:
        if not paths:
            raise ConfigError(f"--input {opts_input} is not a folder with files, nor a glob or "
                              "manifest (.txt/.csv); check the path")
        if len(paths) < _FOLDER_SAMPLE and not any(
                path.lower().endswith(IMAGE_EXTENSIONS) for path in paths):
            raise ConfigError(f"--input folder {opts_input} has no image files "
                              f"({' '.join(IMAGE_EXTENSIONS)}); pass a glob such as "
                              f"'{opts_input.rstrip('/')}/*.<ext>' for other names")
    elif not paths:
        raise ConfigError(f"--input {opts_input} matches no files; check the path and pattern")
    return spec


def _detector_labels(opts: DetectClassifyOptions) -> Optional[dict[int, str]]:
    label_map = opts.detector_label_map
    if label_map is None and opts.detector_model == DEFAULT_DETECTOR:
        label_map = DEFAULT_DETECTOR_LABEL_MAP
    if label_map is None:
        return None
    if not _exists(label_map):
        raise ConfigError(f"--detector_label_map {label_map} does not exist; pass an OD API "
                          "label_map.pbtxt or leave the option out")
    try:
        return read_label_map(resolve_model_path(label_map))
    except ValueError as exc:
        raise ConfigError(f"--detector_label_map {label_map}: {exc}") from exc


def _classifier_labels_path(opts: DetectClassifyOptions) -> str:
    if opts.classifier_labels is not None:
        return opts.classifier_labels
    if opts.classifier_model == DEFAULT_CLASSIFIER:
        return DEFAULT_CLASSIFIER_LABELS
    model = opts.classifier_model.rstrip("/")
    beside = FileSystems.join(model.rsplit("/", 1)[0] if "/" in model else ".", "labels.txt")
    if not FileSystems.exists(beside):
        raise ConfigError(f"no --classifier_labels given and no {beside} beside the model; "
                          "pass --classifier_labels with one label per line")
    return beside


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def validate(opts: DetectClassifyOptions) -> JobConfig:
    """Checks options, models, labels and output, and returns the graph's configuration.

    Raises:
        ConfigError: with one line naming the problem and the fix.
    """
    from transforms.classification import ClassifierModel
    from transforms.detection import DetectorModel

    _check_numbers(opts)
    spec = check_input(opts.input)
    for flag, path in (("--detector_model", opts.detector_model),
                       ("--classifier_model", opts.classifier_model)):
        if not _exists(path):
            raise ConfigError(f"{flag} {path} does not exist; pass the path of your model")
    detector_labels = _detector_labels(opts)
    labels_path = _classifier_labels_path(opts)
    if not _exists(labels_path):
        raise ConfigError(f"--classifier_labels {labels_path} does not exist")
    try:
        labels = read_labels(resolve_model_path(labels_path))
    except (ValueError, OSError) as exc:  # UnicodeDecodeError is a ValueError
        raise ConfigError(f"--classifier_labels {labels_path} cannot be read as UTF-8 text, one "
                          f"label per line: {str(exc).splitlines()[0]}") from exc
    check_output(opts.output, overwrite=opts.overwrite)
    try:
        DetectorModel(local_model_path(opts.detector_model))
    except Exception as exc:  # pylint: disable=broad-except
        raise ConfigError(f"--detector_model {opts.detector_model} is not a usable OD API "
                          f"SavedModel: {_first_line(exc)}") from exc
    try:
        classifier = ClassifierModel(local_model_path(opts.classifier_model),
                                     safe_mode=not opts.unsafe_keras_deserialization)
    except Exception as exc:  # pylint: disable=broad-except
        hint = (" (it uses Lambda layers: pass --unsafe_keras_deserialization if you trust it)"
                if "Lambda" in str(exc) or "safe_mode" in str(exc) else "")
        raise ConfigError(f"--classifier_model {opts.classifier_model} cannot be loaded as an "
                          f"image classifier: {_first_line(exc)}{hint}") from exc
    if classifier.input_height is None or classifier.input_width is None:
        raise ConfigError(f"--classifier_model {opts.classifier_model} has no fixed input size "
                          "(height/width None); export it with a fixed input shape")
    if len(labels) != classifier.num_classes:
        raise ConfigError(f"--classifier_labels {labels_path} has {len(labels)} labels but the "
                          f"classifier has {classifier.num_classes} outputs; give one label per "
                          "output, in order")
    if opts.overwrite:  # every check passed: now the earlier run's tables may go
        delete_tables(opts.output)
    return JobConfig(
        input=spec, output=opts.output, detector_model=opts.detector_model,
        classifier_model=opts.classifier_model, classifier_labels=tuple(labels),
        classifier_input_size=(int(classifier.input_height), int(classifier.input_width)),
        detector_labels=detector_labels, min_score=opts.min_score,
        max_detections=opts.max_detections, crop_padding=opts.crop_padding,
        classifier_batch_size=opts.classifier_batch_size,
        classifier_preprocess=opts.classifier_preprocess,
        max_image_pixels=opts.max_image_pixels,
        safe_mode=not opts.unsafe_keras_deserialization,
        model_copies=opts.model_copies or None, num_shards=opts.num_shards)
