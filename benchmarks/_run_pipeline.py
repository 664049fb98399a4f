"""Rows (c), (d) and (f): runs the job's own entry point, ``beam_pipeline.main.main(argv)``.

Run as ``python -m benchmarks._run_pipeline [--profile FILE.prof] JOB_ARGS...``. With
``--profile`` the whole run is under cProfile with the process's CPU time as its clock (a busy
machine then stretches nothing; in-process DirectRunner only: worker processes are not
profiled); read it with ``python -m pstats FILE.prof`` or ``--print_profile FILE.prof``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str]) -> None:
    from beam_pipeline.main import main as job_main

    if argv[:1] == ["--profile"]:
        import cProfile
        import time

        profiler = cProfile.Profile(time.process_time)
        try:
            profiler.runcall(job_main, argv[2:])
        finally:
            profiler.dump_stats(argv[1])
    else:
        job_main(argv)


def print_profile(path: str, count: int = 40) -> None:
    """The ``count`` functions with the most own time, then the most cumulative time."""
    import pstats

    stats = pstats.Stats(path)
    stats.sort_stats("tottime").print_stats(count)
    stats.sort_stats("cumulative").print_stats(count)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--print_profile"]:
        print_profile(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 40)
    else:
        main(sys.argv[1:])
