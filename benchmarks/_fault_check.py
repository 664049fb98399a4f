"""What a fault run left: ``python -m benchmarks._fault_check OUTPUT MANIFEST`` prints one JSON
line: the images rows, the input paths without a row or with more than one, the statuses, the
detections and ``run.json``'s status and counts (null when there is no run.json)."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter


def check(output: str, manifest: str) -> dict:
    import pyarrow.dataset as ds

    with open(manifest) as handle:
        inputs = [line.strip() for line in handle if line.strip()]

    def table(name: str) -> list[dict]:
        folder = os.path.join(output, name)
        if not os.path.isdir(folder) or not any(
                entry.endswith(".parquet") for entry in os.listdir(folder)):
            return []
        return ds.dataset(folder, format="parquet").to_table().to_pylist()

    images, detections = table("images"), table("detections")
    seen = Counter(row["image_path"] for row in images)
    record = None
    if os.path.exists(os.path.join(output, "run.json")):
        with open(os.path.join(output, "run.json")) as handle:
            record = json.load(handle)
    return {
        "inputs": len(inputs), "images_rows": len(images),
        "missing": len(set(inputs) - set(seen)),
        "repeated": sum(1 for count in seen.values() if count > 1),
        "statuses": dict(Counter(row["status"] for row in images)),
        "detections_rows": len(detections),
        "run_ids": len({row["run_id"] for row in images + detections}),
        "run_json": record and record.get("status"),
        "counts": record and {key: record["counts"].get(key) for key in (
            "images_read", "images_ok", "regions_written")},
        "commits": record and record.get("commits"),
    }


if __name__ == "__main__":
    print(json.dumps(check(sys.argv[1], sys.argv[2])))
