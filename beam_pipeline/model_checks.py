"""Fail-fast checks of the models and labels: they exist, read, load and fit each other."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Optional

from apache_beam.io.filesystems import FileSystems

from beam_pipeline.errors import ConfigError
from transforms import model_cache
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
from transforms.paths import local_file_problem
from transforms.records import short_message
from transforms.tf_runtime import configure_tensorflow

__all__ = [
    "LoadedModels",
    "check_models",
    "check_models_exist",
    "classifier_labels",
    "detector_labels",
    "min_score",
    "parse_detector_classes",
]

# The score threshold when neither --min_score nor the detector says otherwise.
DEFAULT_MIN_SCORE = 0.5
# A model's own error, as quoted in a one-line ConfigError.
_QUOTE_LIMIT = 300


def detector_labels(opts: Any) -> Optional[dict[int, str]]:
    """The detector's label map (the bundled one with the bundled detector), or None."""
    label_map = opts.detector_label_map
    if label_map is None and opts.detector_model == DEFAULT_DETECTOR:
        label_map = DEFAULT_DETECTOR_LABEL_MAP
    if label_map is None:
        return None
    if not model_exists(label_map):
        raise ConfigError(f"--detector_label_map {label_map} does not exist; pass an OD API "
                          "label_map.pbtxt or leave the option out")
    problem = local_file_problem(resolve_model_path(label_map))
    if problem is not None:
        raise ConfigError(f"--detector_label_map {label_map}: {problem}")
    try:
        return read_label_map(resolve_model_path(label_map))
    except ValueError as exc:
        raise ConfigError(f"--detector_label_map {label_map}: {exc}") from exc


def _classifier_labels_path(opts: Any) -> str:
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
    return short_message(text.splitlines()[0], _QUOTE_LIMIT)


def classifier_labels(opts: Any) -> tuple[str, list[str]]:
    """The classifier's labels file (given, bundled, or ``labels.txt`` beside the model) and
    its labels."""
    labels_path = _classifier_labels_path(opts)
    if not model_exists(labels_path):
        raise ConfigError(f"--classifier_labels {labels_path} does not exist")
    problem = local_file_problem(resolve_model_path(labels_path))
    if problem is not None:
        raise ConfigError(f"--classifier_labels {labels_path}: {problem}")
    try:
        return labels_path, read_labels(resolve_model_path(labels_path))
    except LabelError as exc:
        raise ConfigError(f"--classifier_labels {labels_path}: {exc}") from exc
    except (ValueError, OSError) as exc:  # UnicodeDecodeError is a ValueError
        raise ConfigError(f"--classifier_labels {labels_path} cannot be read as UTF-8 text, one "
                          f"label per line: {str(exc).splitlines()[0]}") from exc


def _models(opts: Any) -> tuple[tuple[str, str], ...]:
    return (("--detector_model", opts.detector_model),
            ("--classifier_model", opts.classifier_model))


def check_models_exist(opts: Any) -> None:
    """Both model paths name something (a typo fails before anything is read)."""
    for flag, path in _models(opts):
        if not model_exists(path):
            raise ConfigError(f"{flag} {path} does not exist; pass the path of your model")


class LoadedModels(NamedTuple):
    """What loading the models proved."""

    detector_description: str  # the export variant and its box convention, in words
    box_format: str  # the convention the probe proved (transforms.box_formats)
    crop_size: tuple[int, int]  # the classifier's input height, width


def check_models(opts: Any, labels: Sequence[str], labels_path: str) -> LoadedModels:
    """Loads both models once (local copies, files checked before anything opens them), proves
    the detector's box convention and checks the classifier's input size and outputs."""
    for flag, path in _models(opts):
        problem = local_model_problem(local_model_path(path))  # before anything opens a file
        if problem is not None:
            raise ConfigError(f"{flag}: {problem}")
    configure_tensorflow()  # loads TensorFlow once, its start-up noise filtered
    detector, box_format = _load_detector(opts)
    return LoadedModels(_describe(detector), box_format,
                        _checked_classifier(opts, labels, labels_path))


def _load_detector(opts: Any) -> tuple[Any, str]:
    from transforms.detection import DetectorModel

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
    # The handler is given the proven convention: a pipeline in this process reuses the model.
    model_cache.keep("detector", local_model_path(opts.detector_model), detector,
                     box_format=box_format)
    return detector, box_format


def _checked_classifier(opts: Any, labels: Sequence[str], labels_path: str) -> tuple[int, int]:
    """The classifier's input (height, width), once it loads with one output per label."""
    from transforms.classification import ClassifierModel

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
    model_cache.keep("classifier", local_model_path(opts.classifier_model), classifier,
                     safe_mode=not opts.unsafe_keras_deserialization)
    return int(classifier.input_height), int(classifier.input_width)


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


def min_score(opts: Any) -> tuple[float, str]:
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
