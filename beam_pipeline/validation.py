"""Fail-fast checks: every configuration mistake is caught before the pipeline starts."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import NamedTuple, Optional

from apache_beam.io.filesystems import FileSystems

from beam_pipeline.commits import commit_every, read_commits, resumable
from beam_pipeline.errors import ConfigError
from beam_pipeline.options import DetectClassifyOptions
from beam_pipeline.output_checks import check_output, check_output_location
from beam_pipeline.storage import storage_problem
from transforms.labels import LabelError, read_label_map, read_labels
from transforms.model_files import (
    DEFAULT_CLASSIFIER,
    DEFAULT_CLASSIFIER_LABELS,
    DEFAULT_DETECTOR,
    DEFAULT_DETECTOR_LABEL_MAP,
    SCORE_THRESHOLD_FILE,
    local_model_path,
    local_model_problem,
    model_exists,
    read_score_threshold,
    resolve_model_path,
)
from transforms.paths import has_scheme, local_file_problem, local_path
from transforms.reading import (
    IMAGE_EXTENSIONS,
    MANIFEST_EXTENSIONS,
    InputSpec,
    first_manifest_path,
    listed_kind,
    resolve_input,
)
from transforms.tf_runtime import configure_tensorflow

__all__ = ["Checked", "ConfigError", "check_input", "removing_created_output", "validate"]


# The score threshold when neither --min_score nor the detector says otherwise.
DEFAULT_MIN_SCORE = 0.5
# Smaller tiles than this only multiply detector calls.
MIN_TILE_SIZE = 32


def _exists(path: str) -> bool:
    return model_exists(path)


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


_FOLDER_SAMPLE = 10_000


def check_input(opts_input: str, *, recursive: bool = True) -> InputSpec:
    """Resolves ``--input`` and checks that it names at least one image (a manifest: that it
    exists and names at least one path), so a typo fails here rather than as an empty run.
    A folder is searched in its subfolders too when ``recursive``."""
    if not opts_input.strip():
        raise ConfigError("--input is empty; pass a glob, a folder or a manifest file")
    if opts_input.lower().endswith(MANIFEST_EXTENSIONS) and not FileSystems.exists(opts_input):
        raise ConfigError(f"--input manifest {opts_input} does not exist; check the path")
    if opts_input.lower().endswith(MANIFEST_EXTENSIONS) and "*" not in opts_input:
        problem = local_file_problem(opts_input)  # a FIFO would block the first read
        if problem is not None:
            raise ConfigError(f"--input manifest {opts_input}: {problem}")
    try:
        spec = resolve_input(opts_input, recursive=recursive)
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
    if not spec.only_images:
        if not paths:
            raise ConfigError(f"--input {opts_input} matches no files; check the path and "
                              "pattern")
        return spec
    local = None if has_scheme(opts_input) else opts_input
    if local is not None and not os.path.exists(local):
        raise ConfigError(f"--input {opts_input} does not exist; check the path")
    if local is not None and os.path.isfile(local):
        raise ConfigError(f"--input {opts_input} is a file without an image extension "
                          f"({' '.join(IMAGE_EXTENSIONS)}); pass it as a glob, or list it in a "
                          ".txt manifest")
    if len(paths) < _FOLDER_SAMPLE and not any(
            listed_kind(path, spec.root) == "image" for path in paths):
        where = "in it or its subfolders" if recursive else (
            "at its top level (--recursive=false; its subfolders were not searched)")
        raise ConfigError(f"--input folder {opts_input} has no image files {where} "
                          f"({' '.join(IMAGE_EXTENSIONS)}; hidden files skipped); pass a glob "
                          f"such as '{opts_input.rstrip('/')}/**.<ext>' for other names")
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
    problem = local_file_problem(resolve_model_path(label_map))
    if problem is not None:
        raise ConfigError(f"--detector_label_map {label_map}: {problem}")
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
    from transforms.classification import ClassifierModel
    from transforms.detection import DetectorModel

    _check_numbers(opts)
    problem = storage_problem(opts)  # bounded: before anything waits on Beam's retries
    if problem is not None:
        raise ConfigError(problem)
    spec = check_input(opts.input, recursive=opts.recursive)
    for flag, path in (("--detector_model", opts.detector_model),
                       ("--classifier_model", opts.classifier_model)):
        if not _exists(path):
            raise ConfigError(f"{flag} {path} does not exist; pass the path of your model")
    detector_labels = _detector_labels(opts)
    labels_path = _classifier_labels_path(opts)
    if not _exists(labels_path):
        raise ConfigError(f"--classifier_labels {labels_path} does not exist")
    problem = local_file_problem(resolve_model_path(labels_path))
    if problem is not None:
        raise ConfigError(f"--classifier_labels {labels_path}: {problem}")
    try:
        labels = read_labels(resolve_model_path(labels_path))
    except LabelError as exc:
        raise ConfigError(f"--classifier_labels {labels_path}: {exc}") from exc
    except (ValueError, OSError) as exc:  # UnicodeDecodeError is a ValueError
        raise ConfigError(f"--classifier_labels {labels_path} cannot be read as UTF-8 text, one "
                          f"label per line: {str(exc).splitlines()[0]}") from exc
    check_output_location(opts.output, spec)
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
    for flag, path in (("--detector_model", opts.detector_model),
                       ("--classifier_model", opts.classifier_model)):
        problem = local_model_problem(local_model_path(path))  # before anything opens a file
        if problem is not None:
            raise ConfigError(f"{flag}: {problem}")
    configure_tensorflow()  # loads TensorFlow once, its start-up noise filtered
    try:
        detector = DetectorModel(local_model_path(opts.detector_model),
                                 box_format=opts.detector_box_format)
    except Exception as exc:  # pylint: disable=broad-except
        raise ConfigError(f"--detector_model {opts.detector_model} is not a usable OD API "
                          f"SavedModel: {_first_line(exc)}") from exc
    try:  # proves how its boxes are expressed: nothing is ever read in the wrong units
        box_format = detector.prove_box_format()
    except ValueError as exc:
        raise ConfigError(f"--detector_model {opts.detector_model}: {_first_line(exc)}") from exc
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
    min_score, min_score_source = _min_score(opts)
    return Checked(
        input=spec, labels=tuple(labels), labels_path=labels_path,
        detector_labels=detector_labels, detector_description=_describe(detector),
        box_format=box_format,
        crop_size=(int(classifier.input_height), int(classifier.input_width)),
        min_score=min_score, min_score_source=min_score_source,
        classify_classes=parse_detector_classes(opts.classify_detector_classes,
                                                detector_labels),
        commit_every=every, commits=tuple(commits))


def parse_detector_classes(value: Optional[str],
                           label_map: Optional[dict[int, str]]) -> Optional[frozenset[int]]:
    """``--classify_detector_classes``: comma-separated ids or label-map names to ids."""
    if value is None or not value.strip():
        return None
    by_name = {name: class_id for class_id, name in (label_map or {}).items()}
    ids = set()
    for word in (part.strip() for part in value.split(",")):
        if not word:
            continue
        if word.isdigit():
            if int(word) < 1:
                raise ConfigError(f"--classify_detector_classes: {word} is not a detector class "
                                  "id (they start at 1)")
            ids.add(int(word))
        elif word in by_name:
            ids.add(by_name[word])
        elif label_map:
            raise ConfigError(f"--classify_detector_classes: {word!r} is not in the detector's "
                              f"label map (names: {', '.join(sorted(by_name))}); use a name "
                              "from it or a class id")
        else:
            raise ConfigError(f"--classify_detector_classes: {word!r} is a name but the detector "
                              "has no label map; pass --detector_label_map or use class ids")
    return frozenset(ids) if ids else None


def _describe(detector) -> str:
    describe = getattr(detector, "describe", None)
    return describe() if callable(describe) else "OD API SavedModel"


def _min_score(opts: DetectClassifyOptions) -> tuple[float, str]:
    """The score threshold and where it came from: the flag, the detector's own file, or 0.5."""
    if opts.min_score is not None:
        return opts.min_score, "--min_score"
    try:
        declared = read_score_threshold(local_model_path(opts.detector_model))
    except ValueError as exc:
        raise ConfigError(f"--detector_model {opts.detector_model}: {exc}; fix the file or "
                          "pass --min_score") from exc
    if declared is not None:
        return declared, f"the detector's {SCORE_THRESHOLD_FILE}"
    return DEFAULT_MIN_SCORE, "the default (the detector declares none)"
