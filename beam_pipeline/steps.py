"""The job's four steps as composite transforms, which ``build_pipeline`` chains (the names are
what the Dataflow, Flink and Spark UIs show):

- ``SelectPaths``: list, sample, skip what earlier runs finished, spread over the workers;
- ``DetectAndClassify``: decode, detect, crop, classify; every path ends as one images row;
- ``WriteTables``: both Parquet tables, and the run's counts from the tables written;
- ``FinishRun``: after both tables are final, the commit record or ``_SUCCESS`` + ``run.json``.
"""

from __future__ import annotations

from typing import Optional

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from beam_pipeline.commits import write_commit
from beam_pipeline.config import ClassifyConfig, DetectConfig, RunConfig, SelectConfig
from beam_pipeline.run_record import finish_run
from transforms.classification import KerasClassifierModelHandler
from transforms.detection import ObjectDetectionModelHandler
from transforms.parquet_sink import CountDetectionRows, CountImageRows, WriteParquetTable
from transforms.progress import CountProgress
from transforms.reading import FAILED_TAG, ReadAndDecodeFn, ReadImagePaths
from transforms.regions import IMAGES_TAG, CropRegionsFn
from transforms.rows import FAILED_REGIONS_TAG, ToRowsFn, failed_batch_rows
from transforms.skipping import SKIPPED_TAG, SkipDoneImages, in_sample

__all__ = ["DetectAndClassify", "FinishRun", "SelectPaths", "WriteTables"]


class SelectPaths(beam.PTransform):
    """Root transform: the input's image paths this run processes (``todo``, spread by a
    Reshuffle so every worker takes a share) and those an earlier complete run already
    finished with the same fingerprint (``skipped``: counted, never processed).

    A commit step's paths were listed, sampled, skipped and counted by the launcher
    (``SelectConfig.input_paths``)."""

    def __init__(self, select: SelectConfig, *, fingerprint: str,
                 progress_folder: Optional[str] = None):
        super().__init__()
        self._select = select
        self._fingerprint = fingerprint
        self._progress = progress_folder

    def expand(self, root):
        select = self._select
        if select.input_paths is None:
            paths = root | "ReadImages" >> ReadImagePaths(select.input)
        else:
            paths = root | "StepPaths" >> beam.Create(list(select.input_paths))
        if select.sample < 1.0:
            paths = paths | "SampleImages" >> beam.Filter(in_sample, select.sample)
        if select.done_tables:
            kept = paths | "SkipDoneImages" >> SkipDoneImages(select.done_tables,
                                                              self._fingerprint)
            paths, skipped = kept.todo, kept[SKIPPED_TAG]
        else:
            skipped = root | "NothingSkipped" >> beam.Create([])
        if self._progress and select.input_paths is None:
            # Before the reshuffle: every path is counted before the first is decoded.
            paths = paths | "CountQueued" >> beam.ParDo(CountProgress(self._progress, "queued"))
        return {"todo": paths | "SpreadPaths" >> beam.Reshuffle(), "skipped": skipped}


def _image_dict(row, run_id: str, fingerprint: str) -> dict:
    # Dicts cross the Flatten faster than dataclasses, which Beam pickles.
    return row.to_dict(run_id=run_id, fingerprint=fingerprint)


class DetectAndClassify(beam.PTransform):
    """Paths to rows: ``detections`` (one list of detections rows per image), ``images`` (one
    images row dict per path: ok, or an error with its stage) and ``failed_regions`` (counts
    of regions whose classification failed).

    Every path ends as exactly one images row, from one of four branches: not read or
    decoded; detection failed or nothing kept; classified; in a classifier batch that
    failed. From CropRegions on, an image's regions travel together (no join on the path).
    """

    def __init__(self, detect: DetectConfig, classify: ClassifyConfig, *, run_id: str,
                 fingerprint: str, progress_folder: Optional[str] = None):
        super().__init__()
        self._detect, self._classify = detect, classify
        self._run_id, self._fingerprint = run_id, fingerprint
        self._progress = progress_folder

    def expand(self, paths):
        detect, classify = self._detect, self._classify
        decoded = paths | "DecodeImages" >> beam.ParDo(
            ReadAndDecodeFn(max_pixels=detect.max_image_pixels)).with_outputs(
                FAILED_TAG, main="decoded")
        images = decoded.decoded
        if self._progress:
            # Images as they enter detection, one at a time: the rows ("done") leave in
            # classifier batches, too coarse for --estimate's steady state.
            images = images | "CountDecoded" >> beam.ParDo(
                CountProgress(self._progress, "decoded"))
        detections = images | "DetectObjects" >> RunInference(
            ObjectDetectionModelHandler(detect.detector_model, model_copies=detect.model_copies,
                                        tiling=detect.tiling, box_format=detect.box_format))
        regions = detections | "CropRegions" >> beam.ParDo(CropRegionsFn(
            min_score=detect.min_score, max_detections=detect.max_detections,
            padding=detect.crop_padding, crop_height=detect.crop_size[0],
            crop_width=detect.crop_size[1],
            classify_classes=detect.classify_detector_classes)).with_outputs(
                IMAGES_TAG, main="regions")
        classified, dead_letters = regions.regions | "ClassifyRegions" >> RunInference(
            KerasClassifierModelHandler(
                classify.classifier_model, preprocess_mode=classify.preprocess,
                batch_size=classify.batch_size, safe_mode=classify.safe_mode,
                model_copies=classify.model_copies)).with_exception_handling()
        rows = classified | "ToRows" >> beam.ParDo(ToRowsFn(
            labels=list(classify.labels), detector_labels=classify.detector_labels,
            detector_model=detect.detector_model, classifier_model=classify.classifier_model,
            run_id=self._run_id, fingerprint=self._fingerprint)).with_outputs(
                IMAGES_TAG, FAILED_REGIONS_TAG, main="detections")
        failed_batches = dead_letters.failed_inferences | "FailedBatches" >> beam.ParDo(
            failed_batch_rows).with_outputs(FAILED_REGIONS_TAG, main="image_rows")
        finished = {"Unread": decoded[FAILED_TAG], "Unclassified": regions[IMAGES_TAG],
                    "Classified": rows[IMAGES_TAG], "FailedBatch": failed_batches.image_rows}
        image_rows = []
        for name, branch in finished.items():
            if self._progress:  # counted where each row is made: the Flatten ends the stage
                branch = branch | f"CountDone{name}" >> beam.ParDo(
                    CountProgress(self._progress, "done"))
            image_rows.append(branch | f"ToDict{name}" >> beam.Map(
                _image_dict, self._run_id, self._fingerprint))
        failed_regions = ((rows[FAILED_REGIONS_TAG], failed_batches[FAILED_REGIONS_TAG])
                          | "FailedRegions" >> beam.Flatten()
                          | "CountFailedRegions" >> beam.CombineGlobally(sum))
        return {"detections": rows.detections,
                "images": image_rows | "AllImageRows" >> beam.Flatten(),
                "failed_regions": failed_regions}


class WriteTables(beam.PTransform):
    """Both tables (``OUTPUT/detections``, ``OUTPUT/images``) and what they hold: the final
    file names (``files``, emitted once renamed into place) and the counts of each table
    (``image_counts``, ``detection_counts``), taken from the Arrow tables written: every
    runner can do this, and not every runner reports metrics to the launcher."""

    def __init__(self, run: RunConfig):
        super().__init__()
        self._run = run

    def expand(self, rows):
        run = self._run
        written = {table: rows[table] | f"Write{table.title()}" >> WriteParquetTable(
            run.output, table, num_shards=run.num_shards, part_prefix=run.part_prefix)
            for table in ("detections", "images")}
        return {
            "files": ((written["detections"]["files"], written["images"]["files"])
                      | "WrittenFiles" >> beam.Flatten()),
            "image_counts": (written["images"]["tables"]
                             | "CountImages" >> beam.CombineGlobally(CountImageRows())),
            "detection_counts": (written["detections"]["tables"]
                                 | "CountRegions" >> beam.CombineGlobally(CountDetectionRows())),
        }


class FinishRun(beam.PTransform):
    """The last step, on the workers once both sinks have renamed their files: a commit step's
    record (``_commits/commit-NNNNN.json``), or ``_SUCCESS`` then the complete ``run.json``
    (failing the job after writing when the error gate fails). Runs on the workers, so the
    record is right whether or not the launcher waits for the job (Flex Templates)."""

    def __init__(self, run: RunConfig):
        super().__init__()
        self._run = run

    def expand(self, written):
        run = self._run
        counts = [beam.pvalue.AsSingleton(written[name])
                  for name in ("image_counts", "detection_counts", "failed_regions")]
        if run.commit_index is not None:
            return (written["files"]
                    | "ListFiles" >> beam.combiners.ToList()
                    | "MarkComplete" >> beam.Map(write_commit, run.output, run.commit_index,
                                                 dict(run.commit_header), *counts))
        skipped = beam.pvalue.AsSingleton(
            written["skipped"] | "CountSkipped" >> beam.combiners.Count.Globally()
            | "AddLauncherSkipped" >> beam.Map(lambda count, more: count + more,
                                               run.skipped_in_launcher))
        return (written["files"]
                | "CountFiles" >> beam.combiners.Count.Globally()
                | "MarkComplete" >> beam.Map(finish_run, run.output, dict(run.record), *counts,
                                             skipped, run.max_error_fraction))
