"""Parses options, validates them before any work, runs the graph and prints a summary."""

from __future__ import annotations

import logging
import sys
import time
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from beam_pipeline.options import DetectClassifyOptions, unknown_flags
from beam_pipeline.pipeline import build_pipeline
from beam_pipeline.summary import collect_metrics, format_summary
from beam_pipeline.validation import ConfigError, validate
from transforms.writing import delete_tables

__all__ = ["main", "run"]


def run(argv: Optional[Sequence[str]] = None) -> dict[str, float]:
    """Runs the job with command-line ``argv``; returns its metrics (empty when the runner
    does not report them). Raises ConfigError before any work on a configuration mistake."""
    argv = list(argv) if argv is not None else sys.argv[1:]
    options = PipelineOptions(argv)
    job = options.view_as(DetectClassifyOptions)
    unknown = unknown_flags(argv)
    if unknown:
        raise ConfigError(f"unknown option(s) {' '.join(unknown)}: check the spelling against "
                          "'python -m beam_pipeline --help' and Beam's pipeline options")
    # Validation reads models, manifests and the output folder before a Pipeline exists (which
    # is what normally hands the options to the filesystems): s3:// needs its endpoint and keys.
    FileSystems.set_options(options)
    config = validate(job)
    start = time.monotonic()
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, config)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception:
        # WriteDetections may have finished before a later stage failed: remove what this run
        # wrote, so nothing in --output looks like a finished run's table.
        delete_tables(config.output)
        raise
    values = collect_metrics(result)
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    if values or runner in ("DirectRunner", "direct"):
        print(format_summary(values, time.monotonic() - start, config.output), flush=True)
    return values


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command-line entry: a configuration mistake exits 2 with one line saying what to fix."""
    logging.getLogger().setLevel(logging.WARNING)
    try:
        run(argv if argv is not None else sys.argv[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
