"""The whole job as one plain loop (no Beam): decode, detect, select, crop, classify, rows.

Usage::

    python -m training.offline_eval --input DIR/images --output OUT [--min_score 0.3]
    python -m training.evaluate --detections OUT --annotations DIR/annotations.json

``run_loop`` is built from the job's own pieces (``transforms``: ``decode_image``,
``DetectorModel``, ``select_regions``, ``crop_box`` + ``resize_to``, ``ClassifierModel``,
``DetectionRow``), so its rows equal the job's rows for the same settings
(``tests/test_offline_eval.py`` checks it). The evaluator's threshold calibration and the
benchmark's plain-loop row use it. What the job writes to ``images`` (failed paths) is not
reproduced: an image that fails to read, decode or detect, or a region whose classification
fails, just gives no row. The command writes ``OUT/detections/part-00000-of-00001.parquet``.
"""

from __future__ import annotations

import argparse
import glob
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Optional

import numpy as np

from transforms.boxes import crop_box, resize_to
from transforms.classification import best_classes
from transforms.decoding import decode_image
from transforms.records import DetectionRow
from transforms.regions import select_regions

__all__ = ["detect_and_classify", "list_images", "run_loop", "write_detections"]


def _read_bytes(path: str) -> bytes:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return handle.read()


def _classify_rows(pending: list[tuple[dict[str, Any], np.ndarray]], classifier: Any,
                   labels: Sequence[str], preprocess_mode: str) -> list[dict[str, Any]]:
    """Classifies one batch of ``(row fields, crop)``; failures drop their regions, as the
    job's dead letters do."""
    try:
        probabilities = classifier.classify([crop for _, crop in pending], preprocess_mode)
    except Exception:  # noqa: BLE001 - any failure of the batch, as the job's dead letters
        return []  # the job counts a failed batch against each of its images; no rows
    rows = []
    for (fields, _), answer in zip(pending, best_classes(np.asarray(probabilities))):
        if answer.error is not None or not 0 <= answer.class_id < len(labels):
            continue
        rows.append(DetectionRow(class_id=answer.class_id, label=labels[answer.class_id],
                                 confidence=answer.confidence, **fields).to_dict())
    return rows


def _decoded(paths: Sequence[str]) -> Iterator[tuple[str, Optional[np.ndarray]]]:
    for path in paths:
        try:
            yield path, decode_image(_read_bytes(path))
        except Exception:  # noqa: BLE001 - one bad image never stops the loop
            yield path, None  # the job writes a 'read' or 'decode' error row for it


def run_loop(paths: Sequence[str], **settings: Any) -> list[dict[str, Any]]:
    """Reads and decodes ``paths`` in order, one image at a time, with the job's decoder, and
    runs ``detect_and_classify`` on them (``settings``: its keyword arguments)."""
    return detect_and_classify(_decoded(paths), **settings)


def detect_and_classify(decoded: Iterable[tuple[str, Optional[np.ndarray]]], *, detector: Any,
                        classifier: Any, labels: Sequence[str],
                        detector_labels: Optional[Mapping[int, str]], min_score: float,
                        max_detections: int = 100, crop_padding: float = 0.0,
                        preprocess_mode: str = "unit", batch_size: int = 64,
                        detector_model: str = "",
                        classifier_model: str = "") -> list[dict[str, Any]]:
    """Runs the job's stages after decoding over ``decoded``, in order, one image at a time.

    Args:
        decoded: ``(path, RGB uint8 pixels)`` pairs, pixels None for an image that could not be
            read or decoded; ``path`` is the rows' ``image_path``, as given.
        detector: a loaded ``transforms.detection.DetectorModel``.
        classifier: a loaded ``transforms.classification.ClassifierModel``.
        labels: the classifier's labels, in its output order.
        detector_labels: ``detector_class_id`` -> ``detector_label`` (None: labels are null).
        min_score, max_detections, crop_padding, preprocess_mode: as the job's options.
        batch_size: crops per classifier call (regions of several images share a call).
        detector_model, classifier_model: the values written in those columns.

    Returns:
        Detection rows, dicts of ``DetectionRow.to_dict()``, in path and ``roi_index`` order.
    """
    names = dict(detector_labels or {})
    height, width = classifier.input_height, classifier.input_width
    rows: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], np.ndarray]] = []
    for path, pixels in decoded:
        if pixels is None:
            continue
        (found,) = detector.detect([pixels])
        if found.error is not None:
            continue
        keep, boxes, _ = select_regions(found, pixels.shape[0], pixels.shape[1],
                                        min_score=min_score, max_detections=max_detections,
                                        padding=crop_padding)
        for roi_index, (index, box) in enumerate(zip(keep, boxes)):
            ymin, xmin, ymax, xmax = (float(v) for v in box)
            class_id = int(found.classes[index])
            fields = {"image_path": path, "roi_index": roi_index, "box_ymin": ymin,
                      "box_xmin": xmin, "box_ymax": ymax, "box_xmax": xmax,
                      "detector_class_id": class_id, "detector_label": names.get(class_id),
                      "detector_score": float(found.scores[index]),
                      "detector_model": detector_model, "classifier_model": classifier_model}
            pending.append((fields, resize_to(crop_box(pixels, box), height, width)))
            if len(pending) == batch_size:
                rows += _classify_rows(pending, classifier, labels, preprocess_mode)
                pending = []
    if pending:
        rows += _classify_rows(pending, classifier, labels, preprocess_mode)
    return rows


def list_images(location: str) -> list[str]:
    """The image files of a folder (by extension, as the job lists a folder) or of a glob,
    sorted."""
    from transforms.inputs import IMAGE_EXTENSIONS

    if os.path.isdir(location):
        return sorted(os.path.join(location, name) for name in os.listdir(location)
                      if name.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(glob.glob(location))


def write_detections(rows: Sequence[Mapping[str, Any]], output: str) -> str:
    """Writes ``rows`` as ``output/detections/part-00000-of-00001.parquet``; returns its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from transforms.records import DETECTIONS_SCHEMA

    folder = os.path.join(output, "detections")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "part-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(list(rows), schema=DETECTIONS_SCHEMA), path)
    return path


def load_models(detector_model: str, classifier_model: str, *, safe_mode: bool = True
                ) -> tuple[Any, Any]:
    """Loads a ``DetectorModel`` and a ``ClassifierModel`` (paths as the job takes them,
    ``bundled:...`` included)."""
    from transforms.classification import ClassifierModel
    from transforms.detection import DetectorModel
    from transforms.model_files import local_model_path
    from transforms.tf_runtime import configure_tensorflow

    configure_tensorflow()
    detector = DetectorModel(local_model_path(detector_model))
    detector.prove_box_format()  # as the job's validation does: the probe decides the boxes
    return (detector,
            ClassifierModel(local_model_path(classifier_model), safe_mode=safe_mode))


def main(argv: Optional[list[str]] = None) -> None:
    from transforms.labels import read_label_map, read_labels
    from transforms.model_files import (
        DEFAULT_CLASSIFIER,
        DEFAULT_CLASSIFIER_LABELS,
        DEFAULT_DETECTOR,
        DEFAULT_DETECTOR_LABEL_MAP,
        local_model_path,
        read_score_threshold,
        resolve_model_path,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="Folder of images, or a glob.")
    parser.add_argument("--output", required=True, help="Gets detections/ Parquet.")
    parser.add_argument("--detector_model", default=DEFAULT_DETECTOR)
    parser.add_argument("--detector_label_map", default=None,
                        help="Default: the bundled map with the bundled detector, else none.")
    parser.add_argument("--classifier_model", default=DEFAULT_CLASSIFIER)
    parser.add_argument("--classifier_labels", default=None,
                        help="Default: the bundled labels with the bundled classifier "
                             "(required with another classifier).")
    parser.add_argument("--min_score", type=float, default=None,
                        help="Keep detections scoring at least this (0..1). Default: as the "
                             "job, the threshold the detector declares, else 0.5.")
    parser.add_argument("--max_detections", type=int, default=100)
    parser.add_argument("--crop_padding", type=float, default=0.0)
    parser.add_argument("--classifier_preprocess", default="unit")
    parser.add_argument("--classifier_batch_size", type=int, default=64)
    args = parser.parse_args(argv)
    label_map = args.detector_label_map or (
        DEFAULT_DETECTOR_LABEL_MAP if args.detector_model == DEFAULT_DETECTOR else None)
    labels = args.classifier_labels or (
        DEFAULT_CLASSIFIER_LABELS if args.classifier_model == DEFAULT_CLASSIFIER else None)
    if labels is None:
        parser.error("--classifier_labels is required with a classifier other than the bundled")

    start = time.perf_counter()
    detector, classifier = load_models(args.detector_model, args.classifier_model)
    loaded = time.perf_counter()
    min_score = args.min_score
    if min_score is None:
        declared = read_score_threshold(local_model_path(args.detector_model))
        min_score = 0.5 if declared is None else declared
        print(f"--min_score {min_score} ("
              f"{'declared by the detector' if declared is not None else 'default'})")
    paths = list_images(args.input)
    rows = run_loop(
        paths, detector=detector, classifier=classifier,
        labels=read_labels(resolve_model_path(labels)),
        detector_labels=read_label_map(resolve_model_path(label_map)) if label_map else None,
        min_score=min_score, max_detections=args.max_detections,
        crop_padding=args.crop_padding, preprocess_mode=args.classifier_preprocess,
        batch_size=args.classifier_batch_size, detector_model=args.detector_model,
        classifier_model=args.classifier_model)
    path = write_detections(rows, args.output)
    done = time.perf_counter()
    print(f"{len(paths)} images, {len(rows)} rows in {path}; models loaded in "
          f"{loaded - start:.1f} s, loop {done - loaded:.1f} s")


if __name__ == "__main__":
    main()
