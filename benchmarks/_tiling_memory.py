"""The memory part of the tiling benchmark, in a fresh process of its own: one large image and
the detector held, RSS before ``detect_tiled`` and its peak during it (``/proc/self/status``,
the peak reset through ``/proc/self/clear_refs`` first). Prints one JSON line.

Run by ``benchmarks.tiling_benchmark --parts memory``; alone::

    .venv/bin/python -m benchmarks._tiling_memory --side 10000 --tile_size 1024 \
        --overlap 0.2 --base_size 2048 --detector models/detector/saved_model
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MB (Linux ``/proc``)."""
    with open("/proc/self/status") as handle:
        fields = dict(line.split(":", 1) for line in handle)
    return (int(fields["VmRSS"].split()[0]) / 1024.0, int(fields["VmHWM"].split()[0]) / 1024.0)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def measure(side: int, tile_size: int, *, overlap: float, base_size: int,
            detector: str) -> dict:
    """One ``side``-squared image (a ``base_size`` scene repeated), one warm-up tile, then
    detect_tiled; the figures."""
    from training.generate import render_image
    from transforms.detection import DetectorModel
    from transforms.tiles import TilingConfig, detect_tiled, tile_grid

    base, _ = render_image(4000, 0, base_size, base_size)
    repeats = -(-side // base_size)
    image = np.ascontiguousarray(np.tile(base, (repeats, repeats, 1))[:side, :side])
    del base
    model = DetectorModel(detector)
    model.detect([image[:tile_size, :tile_size]])  # trace at the tile size
    before, _ = _rss_mb()
    _reset_peak()
    start = time.perf_counter()
    found = detect_tiled(model, image, TilingConfig(tile_size=tile_size, overlap=overlap))
    seconds = time.perf_counter() - start
    return {"side": side, "tile_size": tile_size, "image_mb": image.nbytes / 2**20,
            "tiles": len(tile_grid(side, side, tile_size, overlap)),
            "detections": len(found.scores), "error": found.error, "seconds": seconds,
            "rss_before_mb": before, "peak_during_mb": _rss_mb()[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, required=True)
    parser.add_argument("--tile_size", type=int, required=True)
    parser.add_argument("--overlap", type=float, required=True)
    parser.add_argument("--base_size", type=int, required=True)
    parser.add_argument("--detector", required=True)
    args = parser.parse_args()
    print(json.dumps(measure(args.side, args.tile_size, overlap=args.overlap,
                             base_size=args.base_size, detector=args.detector)))


if __name__ == "__main__":
    main()
