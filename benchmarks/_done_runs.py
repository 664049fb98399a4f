"""The skip benchmark's synthetic archive: N done paths (not files), a complete earlier run
holding them as ``ok`` images rows, and the manifest of new then done paths, written with
pyarrow in batches so that ten million cost seconds and little memory."""

from __future__ import annotations

import datetime
import json
import os
import shutil

__all__ = ["done_inputs", "done_path_array", "write_done_run", "write_manifest"]

BATCH_ROWS = 1_000_000  # done rows built, written and listed at a time


def done_path_array(out: str, start: int, stop: int):
    """Done paths ``start..stop-1`` as a pyarrow string array: absolute image paths in a
    folder that does not exist (archive layout ``lot-NNNNN/img-NNNNNNNN.jpg``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    index = pa.array(range(start, stop), pa.int64())
    lot = pc.utf8_lpad(pc.cast(pc.divide(index, 1000), pa.string()), width=5, padding="0")
    name = pc.utf8_lpad(pc.cast(index, pa.string()), width=8, padding="0")
    base = os.path.join(out, "archive_not_on_disk")
    return pc.binary_join_element_wise(f"{base}/lot-", lot, "/img-", name, ".jpg", "")


def _batches(out: str, count: int):
    for start in range(0, count, BATCH_ROWS):
        yield done_path_array(out, start, min(count, start + BATCH_ROWS))


def write_manifest(path: str, new: list[str], out: str = "", done: int = 0) -> str:
    """One path a line: ``new``, then the first ``done`` done paths (the first path is what
    validation looks at)."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(new) + "\n")
        for paths in _batches(out, done):
            handle.write("\n".join(paths.to_pylist()) + "\n")
    return path


def write_done_run(folder: str, seed_record: dict, out: str, count: int) -> str:
    """A complete earlier run in ``folder``: ``images/`` with one ``ok`` row per done path
    (``done_path_array``), carrying the seed's fingerprint, then ``_SUCCESS`` and a
    ``run.json`` copied from the seed's.

    Its ``run_id`` sorts before the seed's; it has no ``detections/`` table (skipping reads
    only ``images/``). Returns the folder.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_pipeline.run_record import new_run_id, write_run_record
    from transforms.output_folder import write_success_marker
    from transforms.records import IMAGES_SCHEMA, STATUS_OK

    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(os.path.join(folder, "images"))
    run_id = new_run_id(datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
    part = os.path.join(folder, "images", "images-00000-of-00001.parquet")
    with pq.ParquetWriter(part, IMAGES_SCHEMA, compression="zstd") as writer:
        for paths in _batches(out, count):
            n = len(paths)
            writer.write_table(pa.table({
                "image_path": paths, "width": pa.repeat(pa.scalar(160, pa.int32()), n),
                "height": pa.repeat(pa.scalar(120, pa.int32()), n),
                "status": pa.repeat(pa.scalar(STATUS_OK), n),
                "error_stage": pa.nulls(n, pa.string()), "error": pa.nulls(n, pa.string()),
                "num_detections": pa.repeat(pa.scalar(4, pa.int32()), n),
                "run_id": pa.repeat(pa.scalar(run_id), n),
                "fingerprint": pa.repeat(pa.scalar(seed_record["fingerprint"]), n),
            }, schema=IMAGES_SCHEMA))
    counts = dict(seed_record["counts"], images_read=count, images_ok=count, images_skipped=0,
                  regions_kept=4 * count, regions_written=4 * count,
                  regions_classified=4 * count)
    write_success_marker(folder)
    write_run_record(folder, {**seed_record, "run_id": run_id, "counts": counts,
                              "synthetic": "benchmarks.skip_benchmark"})
    return folder


def done_inputs(out: str, seed_record: dict, new: list[str], count: int) -> tuple[str, str]:
    """The synthetic earlier run of ``count`` done paths and the manifest (``new`` then the
    done paths), built unless already built for this count and the seed's fingerprint."""
    folder = os.path.join(out, f"done_{count}")
    listing = os.path.join(out, f"manifest_{len(new)}_{count}.txt")
    stamp = os.path.join(out, f"done_{count}.built.json")
    key = {"fingerprint": seed_record["fingerprint"], "count": count, "new": new[:1] + new[-1:]}
    if os.path.exists(stamp) and os.path.exists(listing):
        with open(stamp) as handle:
            if json.load(handle) == key:
                return folder, listing
    write_done_run(folder, seed_record, out, count)
    write_manifest(listing, new, out, count)
    with open(stamp, "w") as handle:
        json.dump(key, handle)
    return folder, listing
