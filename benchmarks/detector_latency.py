"""Time the exported detector's ``serving_default`` signature on 512x512 images.

Usage::

    python benchmarks/detector_latency.py [--model models/detector/saved_model --calls 50]

Warm-up calls first (tracing, allocator), then the median wall time of single-image calls,
timed with ``time.perf_counter`` only.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/detector/saved_model")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

    import tensorflow as tf

    fn = tf.saved_model.load(args.model).signatures["serving_default"]
    rng = np.random.default_rng(0)
    images = [tf.constant(rng.integers(0, 256, (1, args.size, args.size, 3), dtype=np.uint8))
              for _ in range(8)]
    for i in range(args.warmup):
        fn(input_tensor=images[i % len(images)])
    times = []
    for i in range(args.calls):
        t = time.perf_counter()
        out = fn(input_tensor=images[i % len(images)])
        out["num_detections"].numpy()  # make sure the result is materialized
        times.append((time.perf_counter() - t) * 1000.0)
    print(f"detector {args.model}: {args.size}x{args.size}, {args.calls} calls, "
          f"median {statistics.median(times):.2f} ms/image "
          f"(min {min(times):.2f}, max {max(times):.2f})")


if __name__ == "__main__":
    main()
