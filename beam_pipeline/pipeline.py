"""The job's graph, built by one function from explicit values: four named steps
(``beam_pipeline.steps``), each a composite transform with its own branches."""

from __future__ import annotations

import apache_beam as beam

from beam_pipeline.config import JobConfig
from beam_pipeline.steps import DetectAndClassify, FinishRun, SelectPaths, WriteTables

__all__ = ["build_pipeline"]


def build_pipeline(pipeline: beam.Pipeline, config: JobConfig) -> None:
    """Adds SelectPaths -> DetectAndClassify -> WriteTables -> FinishRun."""
    run = config.run
    paths = pipeline | "SelectPaths" >> SelectPaths(
        config.select, fingerprint=run.fingerprint, progress_folder=config.progress_folder)
    rows = paths["todo"] | "DetectAndClassify" >> DetectAndClassify(
        config.detect, config.classify, run_id=run.run_id, fingerprint=run.fingerprint,
        progress_folder=config.progress_folder)
    written = rows | "WriteTables" >> WriteTables(run)
    _ = ({**written, "failed_regions": rows["failed_regions"], "skipped": paths["skipped"]}
         | "FinishRun" >> FinishRun(run))
