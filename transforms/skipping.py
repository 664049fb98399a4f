"""SampleImages and SkipDoneImages: which listed paths this run processes.

- A deterministic sample keeps a path when a hash of it falls under the fraction: the same
  paths on every runner, in any order, on every rerun.
- The done set of earlier complete runs (their ``ok`` images rows with the same fingerprint)
  is read and joined on the workers, by image path; it is never collected in the launcher.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.parquetio import ReadAllFromParquet

from transforms.records import METRICS_NAMESPACE, STATUS_OK

__all__ = ["HASH_SPACE", "SKIPPED_TAG", "SkipDoneImages", "in_sample", "sample_value"]

SKIPPED_TAG = "skipped"
HASH_SPACE = 2**64


def sample_value(path: str) -> int:
    """The hash ``--sample`` selects by: the first 8 bytes of the SHA-256 of the path."""
    return int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[:8], "big")


def in_sample(path: str, fraction: float) -> bool:
    """Whether ``path`` belongs to the deterministic sample of size ``fraction`` (0..1]."""
    if fraction >= 1.0:
        return True
    return sample_value(path) < fraction * HASH_SPACE


class _KeepUnfinished(beam.DoFn):
    """After the join: a path with no done row goes on; a done path is counted and tagged."""

    def __init__(self):
        self._skipped = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_skipped")

    def process(self, element):
        path, grouped = element
        if not any(True for _ in grouped["todo"]):
            return  # done earlier, not listed now
        if any(True for _ in grouped["done"]):
            self._skipped.inc()
            yield beam.pvalue.TaggedOutput(SKIPPED_TAG, path)
        else:
            yield path


def _is_done(row: dict, fingerprint: str) -> bool:
    return row.get("status") == STATUS_OK and row.get("fingerprint") == fingerprint


class SkipDoneImages(beam.PTransform):
    """Drops the paths that an earlier complete run finished with the same fingerprint.

    Returns a DoOutputsTuple: the main output holds the paths to process, ``skipped`` the
    paths skipped (counted, never written as rows).
    """

    def __init__(self, done_tables: Sequence[str], fingerprint: str):
        super().__init__()
        self._done_tables = list(done_tables)  # images-table globs of complete earlier runs
        self._fingerprint = fingerprint

    def expand(self, paths):
        fingerprint = self._fingerprint
        done = (
            paths.pipeline
            | "DoneTables" >> beam.Create(self._done_tables)
            | "ReadDoneRows" >> ReadAllFromParquet(columns=["image_path", "status",
                                                            "fingerprint"])
            | "KeepDoneRows" >> beam.Filter(_is_done, fingerprint)
            | "KeyDone" >> beam.Map(lambda row: (row["image_path"], True)))
        todo = paths | "KeyTodo" >> beam.Map(lambda path: (path, True))
        return ({"todo": todo, "done": done}
                | "JoinDone" >> beam.CoGroupByKey()
                | "KeepUnfinished" >> beam.ParDo(_KeepUnfinished()).with_outputs(
                    SKIPPED_TAG, main="todo"))

