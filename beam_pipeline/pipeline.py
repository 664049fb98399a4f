"""The job's graph, built by one function from explicit values."""

from __future__ import annotations

import dataclasses
from typing import Optional

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from transforms.classification import KerasClassifierModelHandler
from transforms.detection import ObjectDetectionModelHandler
from transforms.reading import FAILED_TAG, InputSpec, ReadAndDecodeFn, ReadImagePaths
from transforms.regions import IMAGES_TAG, CropRegionsFn
from transforms.writing import (
    CLASSIFY_FAILED_TAG,
    AccountImages,
    ToDetectionRowsFn,
    WriteParquetTable,
    write_success_marker,
)

__all__ = ["JobConfig", "build_pipeline"]


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Everything the graph needs, already validated (see ``beam_pipeline.validation``)."""

    input: InputSpec
    output: str
    detector_model: str
    classifier_model: str
    classifier_labels: tuple[str, ...]
    classifier_input_size: tuple[int, int]  # height, width
    detector_labels: Optional[dict[int, str]] = None
    min_score: float = 0.5
    max_detections: int = 100
    crop_padding: float = 0.0
    classifier_batch_size: int = 64
    classifier_preprocess: str = "unit"
    max_image_pixels: int = 100_000_000
    safe_mode: bool = True
    model_copies: Optional[int] = None
    num_shards: int = 0


def _failed_batch_to_errors(failed) -> list[tuple[str, str]]:
    """A classifier batch that raised: every region in it fails, with the exception's text."""
    batch, exc = failed
    if isinstance(exc, tuple) and len(exc) >= 2:  # Beam passes (type, repr, traceback)
        message = str(exc[1])
    else:
        message = f"{type(exc).__name__}: {exc}"
    return [(region.image_path, message[:500]) for region in batch]


def build_pipeline(pipeline: beam.Pipeline, config: JobConfig) -> None:
    """Adds ReadImages -> DecodeImages -> DetectObjects -> CropRegions -> ClassifyRegions ->
    WriteDetections / WriteImages to ``pipeline``."""
    paths = pipeline | "ReadImages" >> ReadImagePaths(config.input)
    decoded = paths | "DecodeImages" >> beam.ParDo(
        ReadAndDecodeFn(max_pixels=config.max_image_pixels)).with_outputs(FAILED_TAG,
                                                                          main="images")
    detections = decoded.images | "DetectObjects" >> RunInference(
        ObjectDetectionModelHandler(config.detector_model, model_copies=config.model_copies))
    regions = detections | "CropRegions" >> beam.ParDo(CropRegionsFn(
        min_score=config.min_score, max_detections=config.max_detections,
        padding=config.crop_padding, crop_height=config.classifier_input_size[0],
        crop_width=config.classifier_input_size[1])).with_outputs(IMAGES_TAG, main="regions")
    classified, dead_letters = regions.regions | "ClassifyRegions" >> RunInference(
        KerasClassifierModelHandler(
            config.classifier_model, preprocess_mode=config.classifier_preprocess,
            batch_size=config.classifier_batch_size, safe_mode=config.safe_mode,
            model_copies=config.model_copies)).with_exception_handling()
    rows = classified | "ToDetectionRows" >> beam.ParDo(ToDetectionRowsFn(
        labels=list(config.classifier_labels), detector_labels=config.detector_labels,
        detector_model=config.detector_model, classifier_model=config.classifier_model,
    )).with_outputs(CLASSIFY_FAILED_TAG, main="rows")
    classify_failed = (
        (rows[CLASSIFY_FAILED_TAG],
         dead_letters.failed_inferences | "FailedBatches" >> beam.FlatMap(
             _failed_batch_to_errors))
        | "ClassifyFailures" >> beam.Flatten())
    detection_files = rows.rows | "WriteDetections" >> WriteParquetTable(
        config.output, "detections", num_shards=config.num_shards)
    image_rows = (regions[IMAGES_TAG], classify_failed) | "AccountImages" >> AccountImages(
        [decoded[FAILED_TAG]])
    image_files = (image_rows
                   | "ImageRowsToDicts" >> beam.Map(lambda row: row.to_dict())
                   | "WriteImages" >> WriteParquetTable(config.output, "images",
                                                        num_shards=config.num_shards))
    # The sinks emit their final file names only after renaming them, so this runs last, on
    # the workers: the marker is right whether or not the launcher waits for the job.
    _ = ((detection_files, image_files)
         | "WrittenFiles" >> beam.Flatten()
         | "CountFiles" >> beam.combiners.Count.Globally()
         | "MarkComplete" >> beam.Map(lambda _, output: write_success_marker(output),
                                      config.output))
