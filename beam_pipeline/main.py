"""Parses options, validates them before any work, runs the graph and prints a summary."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Optional, Sequence

from beam_pipeline.early_flags import early_flags
from beam_pipeline.quiet import quiet_startup, quiet_worker_processes

__all__ = ["main", "run"]

EXIT_CONFIG = 2
EXIT_ERROR_GATE = 3
EXIT_ERROR = 1


def _is_local_direct(options) -> bool:
    from apache_beam.options.pipeline_options import StandardOptions

    return (options.view_as(StandardOptions).runner or "DirectRunner") in (
        "DirectRunner", "direct", "BundleBasedDirectRunner", "SwitchingDirectRunner")


def run(argv: Optional[Sequence[str]] = None) -> dict[str, float]:
    """Runs the job with command-line ``argv``; returns its metrics (empty when the runner
    does not report them). Raises ConfigError before any work on a configuration mistake, and
    ErrorGateFailed after the rows and the run record are written when the gate fails."""
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline.commits import RunLocked, RunStopped, run_in_commits
    from beam_pipeline.local_mode import choose_local_mode
    from beam_pipeline.options import DetectClassifyOptions, unknown_flags
    from beam_pipeline.pipeline import build_pipeline
    from beam_pipeline.planning import plan
    from beam_pipeline.progress import ProgressPrinter
    from beam_pipeline.run_record import ErrorGateFailed, gate_line, gate_passed, read_run_record
    from beam_pipeline.summary import collect_metrics, format_summary
    from beam_pipeline.validation import ConfigError, removing_created_output, validate
    from transforms.output_folder import delete_tables
    from transforms.records import short_list

    start = time.monotonic()
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
    with removing_created_output(job.output):
        config = plan(job, validate(job))
    if job.overwrite:  # every check passed: now the earlier run's files may go
        left = delete_tables(job.output)
        if left:
            print(f"note: --overwrite deleted only this job's files in {job.output}; left "
                  f"alone: {short_list(left)}", file=sys.stderr)
    local = _is_local_direct(options)
    running = ""
    if local:
        mode = choose_local_mode(argv, config.select.input,
                                 skipping=bool(config.select.done_tables),
                                 verbose=bool(job.verbose))
        running = f"DirectRunner, {mode.reason}"
        if mode.flags:
            options = PipelineOptions([*argv, *mode.flags])
    progress_folder = tempfile.mkdtemp(prefix="bdc-progress-") if local and job.progress \
        else None
    run_config = config.run
    if running:
        run_config = dataclasses.replace(run_config, record={**run_config.record,
                                                             "running": running})
    config = dataclasses.replace(config, progress_folder=progress_folder, run=run_config)
    output = run_config.output
    started = time.monotonic()

    def run_graph(step_config) -> dict[str, float]:
        pipeline = beam.Pipeline(options=options)
        build_pipeline(pipeline, step_config)
        result = pipeline.run()
        result.wait_until_finish()
        return collect_metrics(result)

    workers = local and any("multi_processing" in word for word in options.get_all_options(
        retain_unknown_options=False).values() if isinstance(word, str))
    try:
        with quiet_worker_processes(enabled=workers and os.environ.get("BDC_VERBOSE") != "1"), \
                (ProgressPrinter(progress_folder) if progress_folder
                 else contextlib.nullcontext()):
            if run_config.commit_every:
                values = run_in_commits(config, run_graph, progress_folder=progress_folder)
            else:
                values = run_graph(config)
    except (RunStopped, RunLocked):
        raise  # committed work is kept: nothing here is deleted
    except Exception as exc:
        record = _record_or_none(read_run_record, output)
        if not gate_passed(record):
            raise ErrorGateFailed(gate_line(record, output)) from exc
        if run_config.commit_every:
            raise  # never delete committed work
        # WriteDetections may have finished before a later stage failed: remove what this run
        # wrote, so nothing in --output looks like a finished run's table.
        delete_tables(output)
        raise
    finally:
        if progress_folder:
            shutil.rmtree(progress_folder, ignore_errors=True)
    record = _record_or_none(read_run_record, output)
    ended = time.monotonic()
    print(format_summary(values, record, config, startup_s=started - start,
                         run_s=ended - started), flush=True)
    if not gate_passed(record):
        raise ErrorGateFailed(gate_line(record, output))
    return values


def _record_or_none(read, output: str) -> Optional[dict]:
    try:
        return read(output)
    except (ValueError, OSError):
        return None


def _wants_help(argv: Sequence[str]) -> bool:
    return any(word in ("-h", "--help") for word in argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command-line entry: exit 2 with one line on a configuration mistake (nothing ran),
    exit 3 with one line when the error gate fails (rows and run record written)."""
    argv = list(argv if argv is not None else sys.argv[1:])
    flags = early_flags(argv)
    verbose = flags.verbose  # the parsed value: --verbose=yes and --verbose=1 count too
    if flags.max_image_pixels is not None and flags.max_image_pixels > 0 \
            and "cv2" not in sys.modules:
        # OpenCV reads its limit once, at import: set before anything imports cv2, so this
        # process and the local worker processes it starts (they inherit the environment)
        # decode by this run's limit. Remote workers keep their own environment's.
        os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(flags.max_image_pixels)
    # The filters go in before anything imports Beam: it logs "apitools not found" at import.
    with quiet_startup(enabled=not verbose):
        from beam_pipeline.options import job_parser

        if _wants_help(argv):
            job_parser().print_help()
            return
        # Missing required flags and bad values: argparse's usage line under this program's
        # name and exit 2 (Beam's own options are checked by run()).
        job_parser().parse_known_args(argv)
        from beam_pipeline.commits import RunLocked, RunStopped
        from beam_pipeline.run_record import ErrorGateFailed
        from beam_pipeline.validation import ConfigError

        logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
        try:
            run(argv)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(EXIT_CONFIG)
        except ErrorGateFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(EXIT_ERROR_GATE)
        except RunLocked as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(EXIT_CONFIG)
        except RunStopped as exc:
            logging.getLogger(__name__).info("the step's error", exc_info=exc.__cause__)
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(EXIT_ERROR)
