"""WriteDetections and WriteImages: rows to Arrow tables, then a compressed Parquet dataset
``OUTPUT/<table>/part-*.parquet``; and the run's counts, taken from the tables written."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

from transforms.records import (
    DETECTIONS_SCHEMA,
    IMAGES_SCHEMA,
    STATUS_OK,
)

__all__ = ["PARQUET_CODEC", "ROWS_PER_ROW_GROUP", "CountDetectionRows", "CountImageRows",
           "RowsToTablesFn", "WriteParquetTable"]

PARQUET_CODEC = "zstd"
# Rows per Arrow table, and so per Parquet row group at most.
ROWS_PER_ROW_GROUP = 10_000


class RowsToTablesFn(beam.DoFn):
    """Dict rows (or lists of them) to ``pyarrow.Table``s of up to ``rows_per_table`` rows,
    one per bundle at least: Arrow converts a list of rows in C++, where ``WriteToParquet``'s
    own buffering visits every column of every row in Python (about 60 us a row). Each table
    becomes one row group of the Parquet file."""

    def __init__(self, schema: pa.Schema, rows_per_table: int = ROWS_PER_ROW_GROUP):
        self._schema = schema
        self._rows_per_table = rows_per_table
        self._rows: list = []

    def start_bundle(self) -> None:
        self._rows = []

    def process(self, rows: Mapping | list[Mapping]) -> Iterator[pa.Table]:
        if isinstance(rows, list):  # the rows of one image
            self._rows.extend(rows)
        else:
            self._rows.append(rows)
        if len(self._rows) >= self._rows_per_table:
            yield self._table()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._rows:  # a batch job: everything is in the global window
            yield GlobalWindows.windowed_value_at_end_of_window(self._table())

    def _table(self) -> pa.Table:
        rows, self._rows = self._rows, []
        return pa.Table.from_pylist(rows, schema=self._schema)


class WriteParquetTable(beam.PTransform):
    """Writes dict rows (or lists of them) as a compressed Parquet dataset
    ``OUTPUT/<table>/part-*.parquet`` (``part_prefix``: a commit's ``part-c00003-*``).

    Returns ``{"tables": ..., "files": ...}``: the Arrow tables written (the run's counts are
    taken from them, one element per table rather than per row) and the final file names,
    emitted only once the files are renamed into place.
    """

    def __init__(self, output: str, table: str, *, num_shards: int = 0,
                 part_prefix: str = "part"):
        super().__init__()
        self._prefix = FileSystems.join(output, table, part_prefix)
        self._schema = {"detections": DETECTIONS_SCHEMA, "images": IMAGES_SCHEMA}[table]
        self._num_shards = num_shards

    def expand(self, rows):
        tables = rows | "ToArrow" >> beam.ParDo(RowsToTablesFn(self._schema))
        files = tables | "Write" >> beam.io.WriteToParquetBatched(
            self._prefix, self._schema, codec=PARQUET_CODEC, file_name_suffix=".parquet",
            num_shards=self._num_shards)
        return {"tables": tables, "files": files}


class _SumCounts(beam.CombineFn):
    """Adds up dicts of counts; ``counts(table)`` says what one Arrow table adds."""

    def create_accumulator(self) -> dict[str, int]:
        return {}

    def add_input(self, counts: dict[str, int], table: pa.Table) -> dict[str, int]:
        for key, value in self.counts(table).items():
            counts[key] = counts.get(key, 0) + value
        return counts

    def merge_accumulators(self, accumulators: Iterable[dict[str, int]]) -> dict[str, int]:
        merged: dict[str, int] = {}
        for counts in accumulators:
            for key, value in counts.items():
                merged[key] = merged.get(key, 0) + value
        return merged

    def extract_output(self, counts: dict[str, int]) -> dict[str, int]:
        return counts

    def counts(self, table: pa.Table) -> dict[str, int]:
        raise NotImplementedError


class CountImageRows(_SumCounts):
    """Counts of the images table for the run record: rows, ok, errors by stage."""

    def counts(self, table: pa.Table) -> dict[str, int]:
        counts = {"images": table.num_rows}
        statuses = table.column("status").to_pylist()
        stages = table.column("error_stage").to_pylist()
        for status, stage in zip(statuses, stages):
            key = "ok" if status == STATUS_OK else f"error_{stage}"
            counts[key] = counts.get(key, 0) + 1
        return counts


class CountDetectionRows(_SumCounts):
    """Counts of the detections table: rows, and rows the classifier labelled."""

    def counts(self, table: pa.Table) -> dict[str, int]:
        classified = pc.sum(table.column("classified")).as_py() or 0
        return {"regions": table.num_rows, "classified": int(classified)}
