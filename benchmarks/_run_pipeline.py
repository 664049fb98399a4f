"""Rows (c) and (d): runs ``beam_pipeline.main.run(argv)`` and notes when the first image leaves
the detector (only seen in this process, so only for the in-process DirectRunner)."""

from __future__ import annotations

import json
import os
import sys
import time

_START = time.perf_counter()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    from beam_pipeline.main import main as job_main
    from transforms import detection

    first: list[float] = []
    detect = detection.DetectorModel.detect

    def timed_detect(self, images):
        results = detect(self, images)
        if not first:
            first.append(time.perf_counter() - _START)
        return results

    detection.DetectorModel.detect = timed_detect
    job_main(sys.argv[1:])
    print(json.dumps({"first_image_s": first[0] if first else None}))


if __name__ == "__main__":
    main()
