"""Peak memory and time of each hostile file of issue 21, as the job meets it.

Usage::

    python benchmarks/hostile_memory.py [--check]

Builds the files with ``tests/hostile_files.py`` in a temporary folder and hands each to a
fresh process that does what a worker does with it: images go through ``ReadAndDecodeFn`` (stat,
read, sniff, decode), run records through ``read_run_record``. Each process reports its own
peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), so figures do not mix; the first row
is a process that only imports the same modules, the floor every other row stands on.
``--job`` also runs the whole job (bundled models) on the image at the limit.
``--check`` exits 1 when a refused file costs more than 64 MiB over that floor, or the image at
the limit more than 1.5 GiB over it. Standard library only here; the child processes import
the project (numpy, OpenCV, Beam).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests import hostile_files as hostile  # noqa: E402  (after the path is set)

_CHILD = """
import json, resource, sys, time
import transforms  # OpenCV's pixel limit, before cv2 is imported
from beam_pipeline.run_record import read_run_record
from transforms.reading import ReadAndDecodeFn
kind, path, max_pixels = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
if kind == "image":
    (out,) = list(ReadAndDecodeFn(max_pixels=max_pixels).process(path))
    outcome = ("ok %dx%d" % out.pixels.shape[1::-1]) if not hasattr(out, "tag") else (
        out.value.error_stage + ": " + out.value.error[:70])
elif kind == "record":
    try:
        read_run_record(path)
        outcome = "read"
    except ValueError as exc:
        outcome = "refused: " + str(exc).split(": ", 1)[-1][:60]
else:
    outcome = "imports only"
seconds = time.perf_counter() - start
print(json.dumps({"outcome": outcome, "seconds": seconds,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _measure(kind: str, path: str, max_pixels: int = 100_000_000) -> dict:
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2",
           "OPENCV_LOG_LEVEL": "OFF"}
    env.pop("OPENCV_IO_MAX_IMAGE_PIXELS", None)  # the job's own default
    done = subprocess.run([sys.executable, "-c", _CHILD, kind, path, str(max_pixels)], env=env,
                          capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _job_peak(folder: str, image: str) -> tuple[float, float, int]:
    """Peak RSS (MiB) and seconds of the whole job (bundled models, DirectRunner in process)
    on one image, and its exit code."""
    import resource

    os.makedirs(os.path.join(folder, "job-in"), exist_ok=True)
    os.link(image, os.path.join(folder, "job-in", "image.png"))
    env = {**os.environ, "PYTHONPATH": REPO}
    env.pop("OPENCV_IO_MAX_IMAGE_PIXELS", None)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "beam_pipeline", "--input",
                           os.path.join(folder, "job-in"), "--output",
                           os.path.join(folder, "job-out")], env=env, capture_output=True,
                          timeout=1200, check=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return peak, seconds, done.returncode


def _cases(folder: str) -> list[tuple[str, str, str, bool]]:
    """(name, kind, path, refused_expected)."""
    join = lambda name: os.path.join(folder, name)  # noqa: E731
    os.makedirs(join("rec-nested"))
    os.makedirs(join("rec-huge"))
    return [
        ("imports only (floor)", "none", "", False),
        ("PNG 200x100 (an ordinary image)", "image",
         hostile.png_of_zeros(join("small.png"), 200, 100), False),
        ("PNG of zeros 10000x10000 (at the limit)", "image",
         hostile.png_of_zeros(join("limit.png"), 10000, 10000), False),
        ("PNG of zeros 10001x10000 (over it)", "image",
         hostile.png_of_zeros(join("over.png"), 10001, 10000), True),
        ("TIFF listing its width twice (20000, 10)", "image",
         hostile.tiff_with_repeated_width(join("width.tif")), True),
        ("same TIFF, our header check off", "image-decoder-only", join("width.tif"), True),
        ("Radiance HDR 12000x12000 named .png", "image",
         hostile.hdr_named_png(join("hdr.png")), True),
        ("800 MB file named .png", "image",
         hostile.over_byte_limit(join("big.png"), 800 * 10**6), True),
        ("run.json nested 100000 deep", "record",
         os.path.dirname(hostile.nested_json(join("rec-nested/run.json"))), True),
        ("run.json of 1 GB (whitespace)", "record",
         os.path.dirname(hostile.sparse_whitespace_json(join("rec-huge/run.json"))), True),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 over the bounds")
    parser.add_argument("--job", action="store_true",
                        help="also run the whole job on the image at the limit (about a minute)")
    args = parser.parse_args(argv)
    failures = []
    with tempfile.TemporaryDirectory(prefix="bdc-hostile-") as folder:
        built = time.perf_counter()
        cases = _cases(folder)
        print(f"files built in {time.perf_counter() - built:.1f} s in {folder}")
        floor = None
        print(f"{'file':44} {'peak MiB':>9} {'over floor':>10} {'seconds':>8}  outcome")
        for name, kind, path, refused in cases:
            size = os.path.getsize(path) if os.path.isfile(path) else None
            result = _measure("image" if kind.startswith("image") else kind, path,
                              10**12 if kind == "image-decoder-only" else 100_000_000)
            floor = result["peak_mib"] if floor is None else floor
            over = result["peak_mib"] - floor
            label = name + (f" [{size / 1e6:.2f} MB]" if size is not None else "")
            print(f"{label[:44]:44} {result['peak_mib']:9.0f} {over:10.0f} "
                  f"{result['seconds']:8.2f}  {result['outcome']}")
            bound = 64 if refused else (1536 if "limit" in name else 64)
            if kind != "none" and over > bound:
                failures.append(f"{name}: {over:.0f} MiB over the floor, bound {bound}")
            if kind != "none" and refused == result["outcome"].startswith("ok"):
                failures.append(f"{name}: {result['outcome']}")
        if args.job:
            peak, seconds, code = _job_peak(folder, os.path.join(folder, "limit.png"))
            print(f"whole job on the 10000x10000 PNG (exit {code}): peak {peak:.0f} MiB, "
                  f"{seconds:.1f} s")
    for line in failures:
        print("over bound:", line)
    return 1 if args.check and failures else 0


if __name__ == "__main__":
    sys.exit(main())
