"""Rows (c), (d) and (f): runs the job's own entry point, ``beam_pipeline.main.main(argv)``.

Run as ``python -m benchmarks._run_pipeline [--profile FILE.prof] JOB_ARGS...``. With
``--profile`` the whole run is under cProfile (in-process DirectRunner only: worker processes
are not profiled); read it with ``python -m pstats FILE.prof`` or ``--print_profile``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str]) -> None:
    from beam_pipeline.main import main as job_main

    if argv[:1] == ["--profile"]:
        import cProfile

        profile = argv[1]
        cProfile.runctx("job_main(argv[2:])", globals(), {"job_main": job_main, "argv": argv},
                        filename=profile)
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
