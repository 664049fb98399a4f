"""Inputs: what ``--input`` names (a glob, a folder or a manifest) and the paths it lists."""

from __future__ import annotations

import csv
import dataclasses
import io
import posixpath
from collections.abc import Iterator

from apache_beam.io.filesystems import FileSystems

from transforms.paths import has_scheme

__all__ = [
    "IMAGE_EXTENSIONS",
    "MANIFEST_EXTENSIONS",
    "InputSpec",
    "first_manifest_path",
    "listed_kind",
    "manifest_paths",
    "parse_manifest_line",
    "resolve_input",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
MANIFEST_EXTENSIONS = (".txt", ".csv", ".manifest")


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What ``--input`` names: a glob (``kind='glob'``) or a manifest (``kind='manifest'``).

    A folder is a glob below ``root`` (``root + '**'``, or ``root + '*'`` when not recursive)
    with ``only_images`` set: of what it lists, only visible image files are kept.
    """

    kind: str
    location: str
    csv_column: int | None = None  # manifest CSV: index of the `path` column
    only_images: bool = False  # a folder: keep visible files with image extensions only
    root: str | None = None  # a folder: the folder itself, ending in "/"


def _is_glob(location: str) -> bool:
    return any(char in location for char in "*?[")


def resolve_input(location: str, *, recursive: bool = True) -> InputSpec:
    """Decides what ``--input`` is: a manifest (``.txt``/``.csv``/``.manifest``), a glob, or a
    folder: its image files, in all its subfolders too when ``recursive``. A glob is taken as
    given. A CSV manifest's header is read here to find its ``path`` column.
    """
    lowered = location.lower()
    if lowered.endswith(MANIFEST_EXTENSIONS) and not _is_glob(location):
        column = None
        if lowered.endswith(".csv"):
            with FileSystems.open(location) as handle:
                header_line = io.TextIOWrapper(handle, encoding="utf-8").readline()
            header = [name.strip() for name in next(csv.reader([header_line]), [])]
            if "path" not in header:
                raise ValueError(f"CSV manifest {location} has no 'path' column in its header "
                                 f"(found {header}); add one, or use a text file, one path a line")
            column = header.index("path")
        return InputSpec("manifest", location, csv_column=column)
    if _is_glob(location) or location.lower().endswith(IMAGE_EXTENSIONS):
        return InputSpec("glob", location)
    folder = location if location.endswith("/") else location + "/"
    return InputSpec("glob", folder + ("**" if recursive else "*"), only_images=True,
                     root=folder)


def parse_manifest_line(line: str, *, base: str, csv_column: int | None) -> str | None:
    """One manifest line to a path; blank and ``#`` lines give None. Relative paths are taken
    from the manifest's own folder (``base``)."""
    if csv_column is not None:
        fields = next(csv.reader([line]), [])
        line = fields[csv_column] if csv_column < len(fields) else ""
    path = line.strip()
    if not path or path.startswith("#"):
        return None
    if has_scheme(path) or not base:
        return path
    joined = path if posixpath.isabs(path) else FileSystems.join(base, path)
    if has_scheme(joined):
        return joined
    # Local paths normalized, so that "./a.png" and "/data/a.png" are one path for Distinct.
    return posixpath.normpath(joined)


def manifest_paths(spec: InputSpec) -> Iterator[str]:
    """The paths a manifest names, in its order (repeats kept), read lazily as the pipeline's
    ``ReadImagePaths`` reads them: the launcher's checks, its local-mode count and a commit
    run's listing use this one reader."""
    with FileSystems.open(spec.location, compression_type="uncompressed") as handle:
        lines = io.TextIOWrapper(handle, encoding="utf-8", errors="replace")
        if spec.csv_column is not None:
            next(lines, None)  # the header
        base = posixpath.dirname(spec.location)
        for line in lines:
            path = parse_manifest_line(line, base=base, csv_column=spec.csv_column)
            if path is not None:
                yield path


def first_manifest_path(spec: InputSpec) -> str | None:
    """The first path a manifest names, or None; reads only as far as that line."""
    return next(manifest_paths(spec), None)


def listed_kind(path: str, root: str) -> str:
    """What a folder listing found at ``path`` below ``root``: ``'image'``, ``'hidden'`` (the
    file or a folder between it and ``root`` starts with a dot: ``.git/``, ``._a.jpg``, the
    job's own probes) or ``'other'`` (no image extension: ``README.txt``, ``.json`` sidecars)."""
    relative = path[len(root):] if path.startswith(root) else posixpath.basename(path)
    if any(part.startswith(".") for part in relative.replace("\\", "/").split("/")):
        return "hidden"
    return "image" if path.lower().endswith(IMAGE_EXTENSIONS) else "other"
