"""Time and peak memory of ReadImages on a large manifest (paths listed, nothing decoded).

Usage::

    python benchmarks/manifest_memory.py [--num_paths 100000 --duplicates 0.01]
    python benchmarks/manifest_memory.py --num_paths 10000 --num_paths 100000 --compare

Writes a manifest of ``num_paths`` lines (relative paths, a share of them repeated, a comment
line) to a temporary folder and runs the job's ``ReadImagePaths`` (ReadFromText -> parse ->
Distinct -> Reshuffle) on the DirectRunner, counting the paths that come out. Each run is a
fresh process, so its peak RSS (``resource.getrusage``) is its own. ``--compare`` adds a run
without Distinct, to see what the de-duplication itself costs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def _write_manifest(path: str, num_paths: int, duplicates: float) -> int:
    """Writes the manifest; returns the number of distinct paths in it."""
    repeat_every = int(1 / duplicates) if duplicates > 0 else 0
    distinct = 0
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("# benchmark manifest\n")
        for index in range(num_paths):
            if repeat_every and index % repeat_every == repeat_every - 1:
                handle.write(f"shots/lot-{(index - 1) // 1000:05d}/img-{index - 1:08d}.png\n")
            else:
                handle.write(f"shots/lot-{index // 1000:05d}/img-{index:08d}.png\n")
                distinct += 1
    return distinct


def _measure(manifest: str, distinct: bool) -> dict:
    """Runs ReadImagePaths in this process; returns paths out, seconds and peak RSS."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    from transforms.reading import ReadImagePaths, parse_manifest_line, resolve_input

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    counter = beam.metrics.Metrics.counter("benchmark", "paths")
    spec = resolve_input(manifest)
    start = time.perf_counter()
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    if distinct:
        paths = pipeline | "ReadImages" >> ReadImagePaths(spec)
    else:  # the same steps as ReadImagePaths, without DistinctPaths
        paths = (pipeline
                 | beam.io.ReadFromText(spec.location)
                 | beam.Map(parse_manifest_line, base=os.path.dirname(spec.location),
                            csv_column=None)
                 | beam.Filter(lambda path: path is not None)
                 | beam.Reshuffle())
    _ = paths | beam.Map(lambda _: counter.inc())
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - start
    counters = result.metrics().query(MetricsFilter().with_name("paths"))["counters"]
    return {"paths_out": sum(c.committed for c in counters), "seconds": round(seconds, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_before_run_mb": round(rss_before / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_paths", type=int, action="append",
                        help="manifest lines (repeatable; default 100000)")
    parser.add_argument("--duplicates", type=float, default=0.01,
                        help="share of lines repeating the line before")
    parser.add_argument("--compare", action="store_true", help="also run without Distinct")
    parser.add_argument("--child", nargs=2, metavar=("MANIFEST", "DISTINCT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(_measure(args.child[0], args.child[1] == "1")), flush=True)
        return

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, DirectRunner")
    with tempfile.TemporaryDirectory() as tmp:
        for num_paths in args.num_paths or [100_000]:
            manifest = os.path.join(tmp, f"manifest-{num_paths}.txt")
            distinct = _write_manifest(manifest, num_paths, args.duplicates)
            for with_distinct in ([True, False] if args.compare else [True]):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", manifest, str(int(with_distinct))],
                    check=True, capture_output=True, text=True,
                    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
                figures = json.loads(out.stdout.strip().splitlines()[-1])
                expected = distinct if with_distinct else num_paths
                assert figures["paths_out"] == expected, (figures, expected)
                print(f"{num_paths:>9} lines ({distinct} distinct), "
                      f"{'Distinct+Reshuffle' if with_distinct else 'Reshuffle only    '}: "
                      f"{figures['paths_out']} paths out, {figures['seconds']:.1f} s, "
                      f"{num_paths / figures['seconds']:,.0f} lines/s, "
                      f"peak RSS {figures['peak_rss_mb']:.0f} MB "
                      f"(before the run {figures['rss_before_run_mb']:.0f} MB)", flush=True)


if __name__ == "__main__":
    main()
