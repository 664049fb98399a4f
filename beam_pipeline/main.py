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
# A folder for the progress counts that another process reads (``--estimate``'s sample run).
PROGRESS_FOLDER_ENV = "BDC_PROGRESS_FOLDER"


def _is_local_direct(options) -> bool:
    from apache_beam.options.pipeline_options import StandardOptions

    return (options.view_as(StandardOptions).runner or "DirectRunner") in (
        "DirectRunner", "direct", "BundleBasedDirectRunner", "SwitchingDirectRunner")


def _is_local(options) -> bool:
    from apache_beam.options.pipeline_options import StandardOptions

    from beam_pipeline.commits import LOCAL_RUNNERS

    return (options.view_as(StandardOptions).runner or "DirectRunner") in LOCAL_RUNNERS


def run(argv: Optional[Sequence[str]] = None) -> dict[str, float]:
    """Runs the job with command-line ``argv``; returns its metrics (empty when the runner
    does not report them). Raises ConfigError before any work on a configuration mistake,
    RunLocked (nothing deleted or written) when another live run holds a local ``--output``,
    and ErrorGateFailed after the rows and the run record are written when the gate fails.

    The output folder's lock is held from before ``--overwrite`` deletes anything until the
    run has finished, and released however it ends (docs/commits.md)."""
    from beam_pipeline.options import DetectClassifyOptions
    from beam_pipeline.run_lock import RunLock
    from beam_pipeline.run_record import ErrorGateFailed, gate_line, gate_passed, read_run_record
    from beam_pipeline.summary import format_summary
    from transforms import model_cache

    start = time.monotonic()
    argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        options, config = _configure(argv)  # loads both models: kept for this process's use
        output = config.run.output
        overwrite = bool(options.view_as(DetectClassifyOptions).overwrite)
        with RunLock(output, overwrite=overwrite):
            if overwrite:
                _delete_earlier_run(output)
            options, config, workers = _local_settings(argv, options, config)
            if workers:
                model_cache.forget()  # worker processes load their own
            started = time.monotonic()
            values = _execute(options, config, workers=workers, local=_is_local(options))
            record = _record_or_none(read_run_record, output)
            print(format_summary(values, record, config, startup_s=started - start,
                                 run_s=time.monotonic() - started), flush=True)
            if not gate_passed(record):
                raise ErrorGateFailed(gate_line(record, output))
    finally:
        model_cache.forget()
    return values


def _configure(argv: list[str]):
    """Options parsed, checked and planned; nothing in ``--output`` changed but what
    validation needs (``beam_pipeline.validation``)."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline.options import DetectClassifyOptions, unknown_flags
    from beam_pipeline.planning import plan
    from beam_pipeline.validation import ConfigError, removing_created_output, validate

    options = PipelineOptions(argv)
    job = options.view_as(DetectClassifyOptions)
    unknown = unknown_flags(argv)
    if unknown:
        raise ConfigError(f"unknown option(s) {' '.join(unknown)}: check the spelling against "
                          "'python -m beam_pipeline --help' and Beam's pipeline options")
    from beam_pipeline.run_lock import RunLock

    if job.output:  # a live run's lock refuses before the models load
        RunLock(job.output, overwrite=bool(job.overwrite)).refuse_if_held()
    # Validation reads models, manifests and the output folder before a Pipeline exists (which
    # is what normally hands the options to the filesystems): s3:// needs its endpoint and keys.
    FileSystems.set_options(options)
    with removing_created_output(job.output):
        config = plan(job, validate(job))
    return options, config


def _delete_earlier_run(output: str) -> None:
    """``--overwrite``: the earlier run's files deleted, only files this job writes; called once
    every check has passed and with the folder's lock held, so never under a live run."""
    from transforms.output_folder import delete_tables
    from transforms.records import short_list

    left = delete_tables(output)
    if left:
        print(f"note: --overwrite deleted only this job's files in {output}; left alone: "
              f"{short_list(left)}", file=sys.stderr)


def _local_settings(argv: list[str], options, config):
    """On the DirectRunner: in process or one worker per core (``local_mode``, recorded in
    ``run.json`` as ``running``), and a folder for the progress line. Returns the options,
    the config and whether worker processes run."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline.local_mode import choose_local_mode
    from beam_pipeline.options import DetectClassifyOptions

    if not _is_local_direct(options):
        return options, config, False
    job = options.view_as(DetectClassifyOptions)
    mode = choose_local_mode(argv, config.select.input, skipping=bool(config.select.done_tables),
                             verbose=bool(job.verbose))
    if mode.flags:
        options = PipelineOptions([*argv, *mode.flags])
    record = {**config.run.record, "running": f"DirectRunner, {mode.reason}"}
    config = dataclasses.replace(
        config, run=dataclasses.replace(config.run, record=record),
        progress_folder=(os.environ.get(PROGRESS_FOLDER_ENV)
                         or tempfile.mkdtemp(prefix="bdc-progress-")) if job.progress else None)
    workers = any("multi_processing" in value for value in options.get_all_options(
        retain_unknown_options=False).values() if isinstance(value, str))
    return options, config, workers


def _execute(options, config, *, workers: bool, local: bool) -> dict[str, float]:
    """The pipeline (or, with commits, one pipeline per step) run to the end; its metrics.
    A failed run without commits leaves no table that looks final; committed work is kept.
    ``local``: one machine (``LOCAL_RUNNERS``), where the launcher selects the paths."""
    import apache_beam as beam

    from beam_pipeline.commits import RunStopped, run_in_commits, write_queued
    from beam_pipeline.pipeline import build_pipeline
    from beam_pipeline.progress import ProgressPrinter
    from beam_pipeline.run_record import ErrorGateFailed, gate_line, gate_passed, read_run_record
    from beam_pipeline.selection import select_in_launcher
    from beam_pipeline.summary import collect_metrics
    from transforms.output_folder import delete_tables

    def run_graph(step_config) -> dict[str, float]:
        pipeline = beam.Pipeline(options=options)
        build_pipeline(pipeline, step_config)
        result = pipeline.run()
        result.wait_until_finish()
        return collect_metrics(result)

    output, progress = config.run.output, config.progress_folder
    try:
        with quiet_worker_processes(enabled=workers and os.environ.get("BDC_VERBOSE") != "1"), \
                (ProgressPrinter(progress) if progress else contextlib.nullcontext()):
            if config.run.commit_every:
                return run_in_commits(config, run_graph, progress_folder=progress)
            if local and config.select.done_tables:
                # One machine: the done set as digests here, not a keyed join of every path.
                config, counted = select_in_launcher(config)
                if progress:
                    write_queued(progress, len(config.select.input_paths))
                values = run_graph(config)
                return {**values, **{name: values.get(name, 0) + value
                                     for name, value in counted.items()}}
            return run_graph(config)
    except RunStopped:
        raise  # committed work is kept: nothing here is deleted
    except Exception as exc:
        record = _record_or_none(read_run_record, output)
        if not gate_passed(record):
            raise ErrorGateFailed(gate_line(record, output)) from exc
        if config.run.commit_every:
            raise  # never delete committed work
        # WriteDetections may have finished before a later stage failed: remove what this run
        # wrote, so nothing in --output looks like a finished run's table.
        delete_tables(output)
        raise
    finally:
        if progress:
            shutil.rmtree(progress, ignore_errors=True)


def _record_or_none(read, output: str) -> Optional[dict]:
    try:
        return read(output)
    except (ValueError, OSError):
        return None


def job_failed_line(exc: BaseException) -> str:
    """One line for a job that failed in the runner (a killed worker the engine did not
    retry, a lost cluster): the exception's first line, not the engine's stack traces."""
    from transforms.records import short_message

    first = short_message((str(exc).strip() or type(exc).__name__).splitlines()[0], 300)
    return (f"the job failed ({type(exc).__name__}: {first}); no table in --output is final: "
            "run the same command again with --overwrite to redo it, or with --commit_every so "
            "that a rerun keeps the finished steps (docs/commits.md); --verbose for the trace")


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
        known, _ = job_parser().parse_known_args(argv)
        from beam_pipeline.commits import RunStopped
        from beam_pipeline.run_lock import RunLocked
        from beam_pipeline.run_record import ErrorGateFailed
        from beam_pipeline.validation import ConfigError

        logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
        try:
            if known.estimate:
                from beam_pipeline.estimate import estimate

                estimate(argv)
            else:
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
        except Exception as exc:  # pylint: disable=broad-except
            # The job itself failed in the runner: one line, the traceback with --verbose.
            logging.getLogger(__name__).info("the job's error", exc_info=exc)
            print(f"error: {job_failed_line(exc)}", file=sys.stderr)
            sys.exit(EXIT_ERROR)
