"""Across runs: the complete runs a glob matches (unreadable ones skipped with a warning), and
the latest view, each image's rows from the newest complete run that processed it.

Command line::

    python -m beam_pipeline.runs list 'results/*'
    python -m beam_pipeline.runs latest 'results/*' --table detections --output latest.parquet
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any, Optional

from apache_beam.io.filesystems import FileSystems

from beam_pipeline.run_record import read_run_record
from transforms import output_folder
from transforms.output_folder import RUN_RECORD, table_files
from transforms.paths import is_local_path

__all__ = ["complete_outputs", "latest_view", "main", "table_problem"]

_NEEDED_COLUMNS = {"images": ("image_path", "status", "run_id", "fingerprint"),
                   "detections": ("image_path", "run_id")}


def table_problem(output: str, table: str) -> Optional[str]:
    """Why a table of a complete run cannot be read (a part file that is not Parquet, cut
    short, not a regular file, or lacks the columns read), or None. Reads each file's footer
    only, not its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from transforms.paths import local_file_problem

    for metadata in FileSystems.match([table_files(output, table)])[0].metadata_list:
        name = metadata.path.rsplit("/", 1)[-1]
        problem = local_file_problem(metadata.path)
        if problem is not None:
            return f"{table}/{name}: {problem}"
        try:
            with FileSystems.open(metadata.path, compression_type="uncompressed") as handle:
                names = pq.ParquetFile(handle).schema_arrow.names
        except (pa.ArrowException, OSError, ValueError) as exc:
            return f"{table}/{name} is not a readable Parquet file ({type(exc).__name__})"
        missing = [column for column in _NEEDED_COLUMNS[table] if column not in names]
        if missing:
            return f"{table}/{name} lacks the columns {', '.join(missing)}"
    return None


def _candidate_folders(patterns: Iterable[str]) -> list[str]:
    """Folders matched by the globs: each pattern is matched against ``<pattern>/run.json``,
    so ``results/*`` finds every run folder in ``results/`` without listing their tables."""
    folders = set()
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        for result in FileSystems.match([FileSystems.join(pattern, RUN_RECORD)]):
            for metadata in result.metadata_list:
                folders.add(metadata.path[:-len(RUN_RECORD) - 1])
    return sorted(folders)


def complete_outputs(patterns: Sequence[str], *, warn: bool = True,
                     exclude: Sequence[str] = (),
                     tables: Sequence[str] = output_folder.TABLES
                     ) -> list[tuple[str, dict[str, Any]]]:
    """``(output folder, record)`` of every complete run matching the globs, oldest first.

    Folders without a record, or whose record says anything but complete, are not finished
    runs and are skipped silently; an unreadable record, one of an unknown version, or a
    complete run one of whose ``tables`` cannot be read is skipped with one warning line
    (``warn``): treated as not done, never fatal.
    """
    excluded = {_normal(path) for path in exclude}
    found = []
    for folder in _candidate_folders(patterns):
        if _normal(folder) in excluded:
            continue
        try:
            record = read_run_record(folder)
        except ValueError as exc:
            if warn:
                print(f"warning: ignoring {folder} (treated as not done): {exc}",
                      file=sys.stderr)
            continue
        if record is None or record.get("status") != "complete":
            continue
        problem = next(filter(None, (table_problem(folder, table) for table in tables)), None)
        if problem is not None:
            if warn:
                print(f"warning: ignoring {folder} (treated as not done): {problem}",
                      file=sys.stderr)
            continue
        found.append((folder, record))
    return sorted(found, key=lambda item: item[1].get("run_id", ""))


def _normal(path: str) -> str:
    path = path.rstrip("/")
    return os.path.abspath(path) if is_local_path(path) else path


def _read_table(outputs: Sequence[str], table: str, columns: Optional[Sequence[str]]):
    import pyarrow as pa
    import pyarrow.dataset as ds

    tables = []
    for output in outputs:
        paths = [m.path for m in FileSystems.match([table_files(output, table)])[0].metadata_list]
        if not paths:
            continue
        if is_local_path(output):
            dataset = ds.dataset(paths, format="parquet")
        else:
            from pyarrow import fs as pafs

            filesystem, _ = pafs.FileSystem.from_uri(paths[0])
            dataset = ds.dataset([p.split("://", 1)[1] for p in paths], format="parquet",
                                 filesystem=filesystem)
        tables.append(dataset.to_table(columns=list(columns) if columns else None))
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")


def latest_view(patterns: Sequence[str], table: str,
                columns: Optional[Sequence[str]] = None):
    """Rows of ``table`` ("detections" or "images") from the newest complete run of each image
    path, over every complete run matching the globs; a ``pyarrow.Table``.

    A path's newest run is the largest ``run_id`` among the complete runs whose images table
    has a row for it; its detections come from that run only, so an image that lost all its
    detections in a newer run shows none.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if table not in ("detections", "images"):
        raise ValueError(f"table must be 'detections' or 'images', not {table!r}")
    outputs = [folder for folder, _ in complete_outputs(patterns)]
    images = _read_table(outputs, "images", ["image_path", "run_id"])
    wanted = list(columns) if columns else None
    if wanted is not None:
        wanted = list(dict.fromkeys([*wanted, "image_path", "run_id"]))
    rows = _read_table(outputs, table, wanted) if table == "detections" else \
        _read_table(outputs, "images", wanted)
    if images is None or rows is None:
        from transforms.records import DETECTIONS_SCHEMA, IMAGES_SCHEMA

        schema = DETECTIONS_SCHEMA if table == "detections" else IMAGES_SCHEMA
        empty = schema.empty_table()
        return empty.select(list(columns)) if columns else empty
    newest = images.group_by("image_path").aggregate([("run_id", "max")]).rename_columns(
        ["image_path", "run_id"])
    keys = pc.binary_join_element_wise(newest["image_path"], newest["run_id"], "\x00")
    row_keys = pc.binary_join_element_wise(rows["image_path"], rows["run_id"], "\x00")
    latest = rows.filter(pc.is_in(row_keys, value_set=keys))
    if columns:
        latest = latest.select(list(columns))
    return latest.combine_chunks() if isinstance(latest, pa.Table) else latest


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``list`` the complete runs of a glob, or write their ``latest`` view as Parquet."""
    parser = argparse.ArgumentParser(prog="python -m beam_pipeline.runs",
                                     description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="Complete runs matching the globs, oldest first.")
    listing.add_argument("runs", nargs="+", help="Output folders or globs, e.g. 'results/*'.")
    latest = commands.add_parser("latest", help="The newest complete run's rows per image.")
    latest.add_argument("runs", nargs="+", help="Output folders or globs, e.g. 'results/*'.")
    latest.add_argument("--table", choices=("detections", "images"), default="detections")
    latest.add_argument("--output", required=True, help="Parquet file to write.")
    args = parser.parse_args(argv)
    if args.command == "list":
        for folder, record in complete_outputs(args.runs):
            counts = record.get("counts", {})
            print(f"{record['run_id']}  {folder}  images_read={counts.get('images_read')} "
                  f"ok={counts.get('images_ok')} skipped={counts.get('images_skipped')} "
                  f"fingerprint={record.get('fingerprint')}")
        return
    import pyarrow.parquet as pq

    view = latest_view(args.runs, args.table)
    pq.write_table(view, args.output, compression="zstd")
    print(f"{view.num_rows} {args.table} rows from the latest complete run per image -> "
          f"{args.output}")


if __name__ == "__main__":
    main()
