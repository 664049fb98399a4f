"""Fail-fast checks: every configuration mistake is caught before the pipeline starts."""

from __future__ import annotations

import os
import uuid
from typing import Optional

from apache_beam.io.filesystems import FileSystems

from beam_pipeline.commits import commit_every, fingerprint_difference, read_commits, resumable
from beam_pipeline.options import DetectClassifyOptions
from beam_pipeline.pipeline import JobConfig
from beam_pipeline.runs import complete_outputs, run_identity, table_files
from beam_pipeline.storage import storage_problem
from transforms.labels import read_label_map, read_labels
from transforms.model_files import (
    DEFAULT_CLASSIFIER,
    DEFAULT_CLASSIFIER_LABELS,
    DEFAULT_DETECTOR,
    DEFAULT_DETECTOR_LABEL_MAP,
    SCORE_THRESHOLD_FILE,
    is_local_path,
    local_model_path,
    model_exists,
    read_score_threshold,
    resolve_model_path,
)
from transforms.reading import (
    IMAGE_EXTENSIONS,
    MANIFEST_EXTENSIONS,
    InputSpec,
    first_manifest_path,
    listed_kind,
    resolve_input,
)
from transforms.tf_runtime import configure_tensorflow
from transforms.tiles import TilingConfig
from transforms.writing import COMMITS, RUN_RECORD, TABLES, delete_tables

__all__ = ["ConfigError", "check_input", "check_output", "validate"]


class ConfigError(ValueError):
    """A configuration mistake; the message names the problem and the fix."""


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


def check_output(output: str, *, overwrite: bool, resume: bool = False) -> None:
    """Refuses an output folder that holds an earlier run's tables, complete or not (unless
    ``overwrite``, or ``resume`` for an unfinished run with commits, which the same command
    resumes) and proves the folder is writable by writing and deleting a probe file.

    Nothing is deleted here: ``validate`` deletes the earlier tables only once every other check
    has passed, so a configuration mistake never costs an earlier run's results.
    """
    if is_local_path(output) and os.path.isfile(output.removeprefix("file://")):
        raise ConfigError(f"--output {output} is a file; --output names a folder (it gets "
                          "detections/, images/ and run.json): choose another path")
    existing = [FileSystems.join(output, t) for t in TABLES
                if FileSystems.match([FileSystems.join(output, t, "*")])[0].metadata_list]
    complete = FileSystems.exists(FileSystems.join(output, RUN_RECORD))
    if existing and not overwrite and not (resume and not complete):
        state = "finished" if complete else f"unfinished, no {RUN_RECORD}"
        hint = ""
        if not complete and FileSystems.match(
                [FileSystems.join(output, COMMITS, "commit-*.json")])[0].metadata_list:
            hint = " (it has commits: run its command again, with --commit_every on, to resume)"
        raise ConfigError(f"--output {output} already holds a run's tables ({state}{hint}: "
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


def check_input(opts_input: str, *, recursive: bool = True) -> InputSpec:
    """Resolves ``--input`` and checks that it names at least one image (a manifest: that it
    exists and names at least one path), so a typo fails here rather than as an empty run.
    A folder is searched in its subfolders too when ``recursive``."""
    if not opts_input.strip():
        raise ConfigError("--input is empty; pass a glob, a folder or a manifest file")
    if opts_input.lower().endswith(MANIFEST_EXTENSIONS) and not FileSystems.exists(opts_input):
        raise ConfigError(f"--input manifest {opts_input} does not exist; check the path")
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
    local = None if "://" in opts_input else opts_input
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

    A local ``--output`` folder that the checks created is removed again when a later check
    fails, so a mistake leaves nothing behind.

    Raises:
        ConfigError: with one line naming the problem and the fix.
    """
    local = opts.output.removeprefix("file://") if is_local_path(opts.output) else None
    existed = local is None or os.path.exists(local)
    try:
        return _validate(opts)
    except ConfigError:
        if not existed and os.path.isdir(local) and not os.listdir(local):
            os.rmdir(local)
        raise


def _validate(opts: DetectClassifyOptions) -> JobConfig:
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
    try:
        labels = read_labels(resolve_model_path(labels_path))
    except (ValueError, OSError) as exc:  # UnicodeDecodeError is a ValueError
        raise ConfigError(f"--classifier_labels {labels_path} cannot be read as UTF-8 text, one "
                          f"label per line: {str(exc).splitlines()[0]}") from exc
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
    configure_tensorflow()  # loads TensorFlow once, its start-up noise filtered
    try:
        detector = DetectorModel(local_model_path(opts.detector_model))
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
    min_score, min_score_source = _min_score(opts)
    classify_classes = parse_detector_classes(opts.classify_detector_classes, detector_labels)
    identity = run_identity(
        opts, min_score=min_score, min_score_source=min_score_source, labels=labels,
        detector_labels=detector_labels, labels_path=labels_path,
        detector_description=_describe(detector),
        row_options={"classify_detector_classes": sorted(classify_classes or []) or None,
                     "tile_size": opts.tile_size,
                     **({"tile_overlap": opts.tile_overlap,
                         "tile_full_image": opts.tile_full_image} if opts.tile_size else {})})
    for commit in commits[:1]:  # every commit of a folder has its first one's fingerprint
        if commit.get("fingerprint") != identity.fingerprint:
            raise ConfigError(
                f"--output {opts.output} holds an unfinished run ({len(commits)} commits) made "
                "with other settings: "
                + fingerprint_difference(commit.get("fingerprint_parts", {}), identity.parts)
                + "; run its own command again to resume it, or pass --overwrite to start "
                "afresh")
        # One run across its attempts: its id and start are the first attempt's.
        identity = identity._replace(run_id=commit["run_id"], record={
            **identity.record, "run_id": commit["run_id"], "started": commit["started"]})
    done = complete_outputs(opts.skip_done_in or [], exclude=[opts.output])
    done = [(folder, record) for folder, record in done
            if record.get("fingerprint") == identity.fingerprint]
    if opts.overwrite:  # every check passed: now the earlier run's tables may go
        delete_tables(opts.output)
    record = {**identity.record, "skip_done_in": {
        "patterns": list(opts.skip_done_in or []),
        "complete_runs_with_this_fingerprint": [folder for folder, _ in done]}}
    return JobConfig(
        input=spec, output=opts.output, detector_model=opts.detector_model,
        classifier_model=opts.classifier_model, classifier_labels=tuple(labels),
        classifier_input_size=(int(classifier.input_height), int(classifier.input_width)),
        detector_labels=detector_labels, min_score=min_score,
        max_detections=opts.max_detections, crop_padding=opts.crop_padding,
        classifier_batch_size=opts.classifier_batch_size,
        classifier_preprocess=opts.classifier_preprocess,
        max_image_pixels=opts.max_image_pixels,
        safe_mode=not opts.unsafe_keras_deserialization,
        model_copies=opts.model_copies or None, num_shards=opts.num_shards,
        run_id=identity.run_id, fingerprint=identity.fingerprint, record=record,
        done_tables=tuple(table_files(folder, "images") for folder, _ in done),
        sample=opts.sample, max_error_fraction=opts.max_error_fraction,
        tiling=TilingConfig(opts.tile_size, overlap=opts.tile_overlap,
                            full_image=opts.tile_full_image,
                            batch_size=opts.tile_batch_size) if opts.tile_size else None,
        classify_detector_classes=classify_classes, commit_every=every,
        fingerprint_parts=identity.parts)


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
