"""ReadImages and DecodeImages: from a glob, folder or manifest to decoded RGB images."""

from __future__ import annotations

import csv
import dataclasses
import io
import posixpath
from collections.abc import Iterator
from typing import Optional

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from transforms.image_ops import DEFAULT_MAX_IMAGE_PIXELS, DecodeError, decode_image
from transforms.records import DecodedImage, ImageRow

__all__ = [
    "FAILED_TAG",
    "IMAGE_EXTENSIONS",
    "InputSpec",
    "ReadAndDecodeFn",
    "ReadImagePaths",
    "parse_manifest_line",
    "resolve_input",
]

METRICS_NAMESPACE = "beam_detect_classify"
FAILED_TAG = "failed"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
MANIFEST_EXTENSIONS = (".txt", ".csv", ".manifest")


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What ``--input`` names: a glob (``kind='glob'``) or a manifest (``kind='manifest'``)."""

    kind: str
    location: str
    csv_column: Optional[int] = None  # manifest CSV: index of the `path` column
    only_images: bool = False  # a folder: keep files with image extensions only


def _is_glob(location: str) -> bool:
    return any(char in location for char in "*?[")


def resolve_input(location: str) -> InputSpec:
    """Decides what ``--input`` is: a manifest (``.txt``/``.csv``/``.manifest``), a glob, or a
    folder (its image files). A CSV manifest's header is read here to find its ``path`` column.
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
    return InputSpec("glob", folder + "*", only_images=True)


def parse_manifest_line(line: str, *, base: str, csv_column: Optional[int]) -> Optional[str]:
    """One manifest line to a path; blank and ``#`` lines give None. Relative paths are taken
    from the manifest's own folder (``base``)."""
    if csv_column is not None:
        fields = next(csv.reader([line]), [])
        line = fields[csv_column] if csv_column < len(fields) else ""
    path = line.strip()
    if not path or path.startswith("#"):
        return None
    if "://" in path or posixpath.isabs(path) or not base:
        return path
    return FileSystems.join(base, path)


def _has_image_extension(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


class ReadImagePaths(beam.PTransform):
    """Lists the input paths once each (duplicates removed), spread across workers."""

    def __init__(self, spec: InputSpec):
        super().__init__()
        self._spec = spec

    def expand(self, pbegin):
        spec = self._spec
        if spec.kind == "manifest":
            base = posixpath.dirname(spec.location)
            paths = (
                pbegin
                | "ReadManifest" >> beam.io.ReadFromText(
                    spec.location, skip_header_lines=1 if spec.csv_column is not None else 0)
                | "ParseManifest" >> beam.Map(parse_manifest_line, base=base,
                                              csv_column=spec.csv_column)
                | "DropBlankLines" >> beam.Filter(lambda path: path is not None))
        else:
            paths = (
                pbegin
                | "MatchFiles" >> fileio.MatchFiles(
                    spec.location, empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
                | "MetadataToPath" >> beam.Map(lambda metadata: metadata.path))
            if spec.only_images:
                paths = paths | "KeepImageFiles" >> beam.Filter(_has_image_extension)
        # Each distinct path once; the reshuffle lets every worker take a share of the list.
        return paths | "DistinctPaths" >> beam.Distinct() | "SpreadPaths" >> beam.Reshuffle()


class ReadAndDecodeFn(beam.DoFn):
    """Reads and decodes one path; any failure becomes an ImageRow on ``failed``.

    Hand-written rather than ``fileio.ReadMatches``: a path that cannot be opened must be
    recorded with its reason, not fail the bundle or vanish.
    """

    def __init__(self, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        self._max_pixels = max_pixels
        self._read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_read")
        self._decoded = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_decoded")
        self._failed_read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_failed_read")
        self._failed_decode = beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                                           "images_failed_decode")
        self._bytes = beam.metrics.Metrics.distribution(METRICS_NAMESPACE, "image_bytes")

    def process(self, path: str) -> Iterator[object]:
        self._read.inc()
        try:
            with FileSystems.open(path, compression_type="uncompressed") as handle:
                data = handle.read()
        except Exception as exc:  # pylint: disable=broad-except
            self._failed_read.inc()
            yield beam.pvalue.TaggedOutput(FAILED_TAG, ImageRow.failed(
                path, "read", f"cannot read the file: {type(exc).__name__}: {exc}"[:1000]))
            return
        self._bytes.update(len(data))
        try:
            pixels = decode_image(data, max_pixels=self._max_pixels)
        except DecodeError as exc:
            self._failed_decode.inc()
            yield beam.pvalue.TaggedOutput(FAILED_TAG, ImageRow.failed(path, "decode", str(exc)))
            return
        self._decoded.inc()
        yield DecodedImage(path, pixels)
