"""The job's graph, built by one function from explicit values."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from beam_pipeline.commits import write_commit
from beam_pipeline.run_record import finish_run
from transforms.classification import KerasClassifierModelHandler
from transforms.detection import ObjectDetectionModelHandler
from transforms.parquet_sink import CountDetectionRows, CountImageRows, WriteParquetTable
from transforms.progress import CountProgress
from transforms.reading import FAILED_TAG, InputSpec, ReadAndDecodeFn, ReadImagePaths
from transforms.regions import IMAGES_TAG, CropRegionsFn
from transforms.rows import FAILED_REGIONS_TAG, ToRowsFn, failed_batch_rows
from transforms.skipping import SKIPPED_TAG, SkipDoneImages, in_sample
from transforms.tiles import TilingConfig

__all__ = ["JobConfig", "build_pipeline"]


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Everything the graph needs, already validated (``beam_pipeline.validation`` builds it
    from the options, whose defaults are the only defaults)."""

    input: InputSpec
    output: str
    detector_model: str
    classifier_model: str
    classifier_labels: tuple[str, ...]
    classifier_input_size: tuple[int, int]  # height, width
    detector_labels: Optional[dict[int, str]]
    min_score: float
    max_detections: int
    crop_padding: float
    classifier_batch_size: int
    classifier_preprocess: str
    max_image_pixels: int
    safe_mode: bool
    model_copies: Optional[int]
    num_shards: int
    run_id: str
    fingerprint: str
    record: Mapping[str, Any]  # the run record's fields known before the run
    done_tables: tuple[str, ...] = ()  # images-table globs of complete earlier runs to skip
    sample: float = 1.0
    max_error_fraction: Optional[float] = None
    progress_folder: Optional[str] = None  # local runs: where workers count progress
    tiling: Optional[TilingConfig] = None
    classify_detector_classes: Optional[frozenset[int]] = None  # None: classify every class
    detector_box_format: str = "normalized"  # proved by validation (transforms.box_formats)
    # Committed progress (beam_pipeline.commits): images per step (0 = one step, no commits);
    # a step's own paths, part-file prefix and commit index, and its commit record's header.
    commit_every: int = 0
    fingerprint_parts: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    input_paths: Optional[tuple[str, ...]] = None
    part_prefix: str = "part"
    commit_index: Optional[int] = None
    commit_header: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _count(pcoll, label: str):
    return pcoll | label >> beam.combiners.Count.Globally()


def build_pipeline(pipeline: beam.Pipeline, config: JobConfig) -> None:
    """Adds ReadImages -> [SampleImages] -> [SkipDoneImages] -> DecodeImages -> DetectObjects
    -> CropRegions -> ClassifyRegions -> WriteDetections / WriteImages -> MarkComplete."""
    if config.input_paths is None:
        paths = pipeline | "ReadImages" >> ReadImagePaths(config.input)
    else:  # a commit step: the launcher listed the input and chose this step's paths
        paths = pipeline | "ReadImages" >> beam.Create(list(config.input_paths))
    if config.sample < 1.0:
        paths = paths | "SampleImages" >> beam.Filter(in_sample, config.sample)
    if config.done_tables:
        kept = paths | "SkipDoneImages" >> SkipDoneImages(config.done_tables, config.fingerprint)
        paths, skipped = kept.todo, kept[SKIPPED_TAG]
    else:
        skipped = pipeline | "NothingSkipped" >> beam.Create([])
    progress = config.progress_folder
    # Before the reshuffle: every path is counted before the first is decoded (a commit step's
    # paths were counted by the launcher).
    if progress and config.input_paths is None:
        paths = paths | "CountQueued" >> beam.ParDo(CountProgress(progress, "queued"))
    # The reshuffle lets every worker take a share of the list.
    paths = paths | "SpreadPaths" >> beam.Reshuffle()
    decoded = paths | "DecodeImages" >> beam.ParDo(
        ReadAndDecodeFn(max_pixels=config.max_image_pixels)).with_outputs(FAILED_TAG,
                                                                          main="images")
    detections = decoded.images | "DetectObjects" >> RunInference(
        ObjectDetectionModelHandler(config.detector_model, model_copies=config.model_copies,
                                    tiling=config.tiling, box_format=config.detector_box_format))
    # One element per image from here on: its regions travel together, so its images row is
    # finished where its regions' answers are (no join on the path).
    regions = detections | "CropRegions" >> beam.ParDo(CropRegionsFn(
        min_score=config.min_score, max_detections=config.max_detections,
        padding=config.crop_padding, crop_height=config.classifier_input_size[0],
        crop_width=config.classifier_input_size[1],
        classify_classes=config.classify_detector_classes)).with_outputs(
            IMAGES_TAG, main="detected")
    classified, dead_letters = regions.detected | "ClassifyRegions" >> RunInference(
        KerasClassifierModelHandler(
            config.classifier_model, preprocess_mode=config.classifier_preprocess,
            batch_size=config.classifier_batch_size, safe_mode=config.safe_mode,
            model_copies=config.model_copies)).with_exception_handling()
    rows = classified | "ToRows" >> beam.ParDo(ToRowsFn(
        labels=list(config.classifier_labels), detector_labels=config.detector_labels,
        detector_model=config.detector_model, classifier_model=config.classifier_model,
        run_id=config.run_id, fingerprint=config.fingerprint)).with_outputs(
            IMAGES_TAG, FAILED_REGIONS_TAG, main="detections")
    failed_batches = dead_letters.failed_inferences | "FailedBatches" >> beam.ParDo(
        failed_batch_rows).with_outputs(FAILED_REGIONS_TAG, main="rows")
    # Every path ends as exactly one of these: not read or decoded, not detected or nothing
    # kept, classified, or in a classifier batch that failed.
    finished = {"Unread": decoded[FAILED_TAG], "Unclassified": regions[IMAGES_TAG],
                "Classified": rows[IMAGES_TAG], "FailedBatch": failed_batches.rows}
    image_rows = []
    for name, branch in finished.items():
        if progress:  # counted where each row is made: the Flatten below ends the stage
            branch = branch | f"CountDone{name}" >> beam.ParDo(CountProgress(progress, "done"))
        # Dicts cross the Flatten faster than dataclasses, which Beam pickles.
        image_rows.append(branch | f"ToDict{name}" >> beam.Map(
            lambda row, run_id, fingerprint: row.to_dict(run_id=run_id, fingerprint=fingerprint),
            config.run_id, config.fingerprint))
    image_rows = image_rows | "AllImageRows" >> beam.Flatten()
    detection_rows = rows.detections
    detections_written = detection_rows | "WriteDetections" >> WriteParquetTable(
        config.output, "detections", num_shards=config.num_shards,
        part_prefix=config.part_prefix)
    images_written = image_rows | "WriteImages" >> WriteParquetTable(
        config.output, "images", num_shards=config.num_shards, part_prefix=config.part_prefix)
    failed_regions = ((rows[FAILED_REGIONS_TAG], failed_batches[FAILED_REGIONS_TAG])
                      | "FailedRegions" >> beam.Flatten()
                      | "CountFailedRegions" >> beam.CombineGlobally(sum))
    # The run's counts, from the tables written (every runner can do this; not all report
    # metrics to the launcher).
    image_counts = (images_written["tables"]
                    | "CountImages" >> beam.CombineGlobally(CountImageRows()))
    detection_counts = (detections_written["tables"]
                        | "CountRegions" >> beam.CombineGlobally(CountDetectionRows()))
    # The sinks emit their final file names only after renaming them, so this runs last, on
    # the workers: the record is right whether or not the launcher waits for the job.
    written = ((detections_written["files"], images_written["files"])
               | "WrittenFiles" >> beam.Flatten())
    if config.commit_index is not None:  # a commit step: its record names its files
        _ = (written
             | "ListFiles" >> beam.combiners.ToList()
             | "MarkComplete" >> beam.Map(
                 write_commit, config.output, config.commit_index,
                 dict(config.commit_header), beam.pvalue.AsSingleton(image_counts),
                 beam.pvalue.AsSingleton(detection_counts),
                 beam.pvalue.AsSingleton(failed_regions)))
        return
    _ = (written
         | "CountFiles" >> beam.combiners.Count.Globally()
         | "MarkComplete" >> beam.Map(
             finish_run, config.output, dict(config.record),
             beam.pvalue.AsSingleton(image_counts), beam.pvalue.AsSingleton(detection_counts),
             beam.pvalue.AsSingleton(failed_regions),
             beam.pvalue.AsSingleton(_count(skipped, "CountSkipped")),
             config.max_error_fraction))
