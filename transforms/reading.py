"""ReadImages and DecodeImages: from a glob, folder or manifest to decoded RGB images."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from transforms.decoding import DEFAULT_MAX_IMAGE_PIXELS, DecodeError, decode_image
from transforms.inputs import (  # re-exported: the stage's inputs, as importers know them
    IMAGE_EXTENSIONS,
    MANIFEST_EXTENSIONS,
    InputSpec,
    first_manifest_path,
    listed_kind,
    manifest_paths,
    parse_manifest_line,
    resolve_input,
)
from transforms.paths import local_file_check
from transforms.records import METRICS_NAMESPACE, DecodedImage, ErrorStage, ImageRow
from transforms.retrying import RetryPolicy, call_with_retries, is_transient

__all__ = [
    "DEFAULT_READ_RETRY",
    "FAILED_TAG",
    "IMAGE_EXTENSIONS",
    "MANIFEST_EXTENSIONS",
    "InputSpec",
    "ReadAndDecodeFn",
    "ReadImagePaths",
    "first_manifest_path",
    "listed_kind",
    "manifest_paths",
    "max_file_bytes",
    "parse_manifest_line",
    "read_at_most",
    "resolve_input",
]

FAILED_TAG = "failed"
DEFAULT_READ_RETRY = RetryPolicy()  # 4 attempts over about 3.5 s


class _SelectListedFn(beam.DoFn):
    """Counts the listed paths; for a folder, passes on its visible image files only and
    counts what it skips (a glob or manifest is taken as given)."""

    def __init__(self, root: str | None):
        self._root = root
        self._listed = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "files_listed")
        self._hidden = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "files_skipped_hidden")
        self._other = beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                                   "files_skipped_not_image")

    def process(self, path: str) -> Iterator[str]:
        kind = "image" if self._root is None else listed_kind(path, self._root)
        if kind == "image":
            self._listed.inc()
            yield path
        elif kind == "hidden":
            self._hidden.inc()
        else:
            self._other.inc()


class ReadImagePaths(beam.PTransform):
    """Lists the input paths once each (duplicates removed). The job spreads them across
    workers itself (``SpreadPaths`` in the graph), after sampling, skipping and counting."""

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
        root = spec.root if spec.only_images else None
        paths = paths | "SelectImageFiles" >> beam.ParDo(_SelectListedFn(root))
        return paths | "DistinctPaths" >> beam.Distinct()


def max_file_bytes(max_pixels: int) -> int:
    """The largest file worth reading for an image of at most ``max_pixels``: 4 bytes a pixel
    (uncompressed 8-bit RGBA) plus 16 MiB of metadata. Larger files are refused from their
    size (stat, or the object store's metadata) before a byte is read into a worker."""
    return max_pixels * 4 + (16 << 20)


def _opened_size(handle: Any) -> int | None:
    """The object's size as the filesystem learnt it when opening (Beam's object-store
    downloaders, ``filesystemio.Downloader.size``, ask for the metadata before any byte of
    the body), or None."""
    size = getattr(getattr(getattr(handle, "raw", None), "_downloader", None), "size", None)
    return size if isinstance(size, int) else None


def read_at_most(handle: Any, limit: int) -> bytes:
    """The stream's bytes up to ``limit + 1`` (one more tells that it is over the limit), in
    growing chunks: ``handle.read(limit + 1)`` would allocate the whole limit (hundreds of MB)
    for every small file, which costs more than reading the file."""
    chunks, total, size = [], 0, 1 << 20
    while total <= limit:
        data = handle.read(min(size, limit + 1 - total))
        if not data:
            break
        chunks.append(data)
        total += len(data)
        size = 16 << 20
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _read_error_message(exc: Exception, attempts: int) -> str:
    if is_transient(exc):
        return f"cannot read the file after {attempts} attempts: {type(exc).__name__}: {exc}"
    if isinstance(exc, PermissionError):
        return f"permission denied: the job's user cannot read it; fix its permissions ({exc})"
    if isinstance(exc, FileNotFoundError):
        return f"file not found (moved or deleted after it was listed?): {exc}"
    return f"cannot read the file: {type(exc).__name__}: {exc}"


class ReadAndDecodeFn(beam.DoFn):
    """Reads and decodes one path; any failure becomes an ImageRow on ``failed``.

    Hand-written rather than ``fileio.ReadMatches``: a path that cannot be opened must be
    recorded with its reason, not fail the bundle or vanish.
    """

    def __init__(self, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 retry: RetryPolicy = DEFAULT_READ_RETRY):
        self._max_pixels = max_pixels
        self._retry = retry
        self._retries = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "read_retries")
        self._read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_read")
        self._decoded = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_decoded")
        self._failed_read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_failed_read")
        self._failed_decode = beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                                           "images_failed_decode")
        self._bytes = beam.metrics.Metrics.distribution(METRICS_NAMESPACE, "image_bytes")

    def _read_bytes(self, path: str) -> bytes:
        # Folders, FIFOs, missing files: never retried. One stat gives a local file's size too.
        problem, size = local_file_check(path)
        if problem is not None:
            raise _ReadError(problem)
        limit = max_file_bytes(self._max_pixels)
        if size is not None and size > limit:
            raise _ReadError(self._over_limit(limit))

        def read() -> bytes:
            with FileSystems.open(path, compression_type="uncompressed") as handle:
                known = size if size is not None else _opened_size(handle)
                if known is not None and known > limit:
                    raise _ReadError(self._over_limit(limit))  # from metadata, body unread
                if known is not None:  # one allocation of the known size (+1 tells it grew)
                    return handle.read(known + 1)
                return read_at_most(handle, limit)

        try:
            # On top of the filesystem's own retries: what still fails transiently (a reset
            # mid-body, throttling, a network mount's EIO) gets a few more tries.
            data = call_with_retries(read, self._retry, on_retry=lambda _: self._retries.inc())
        except _ReadError:
            raise
        except Exception as exc:  # pylint: disable=broad-except
            raise _ReadError(_read_error_message(exc, self._retry.attempts)) from exc
        if len(data) > limit:
            raise _ReadError(self._over_limit(limit))
        return data

    def _over_limit(self, limit: int) -> str:
        return (f"file is over {limit} bytes, more than any image within "
                f"--max_image_pixels={self._max_pixels} needs (raise that option if it is a "
                "real image)")

    def process(self, path: str) -> Iterator[object]:
        self._read.inc()
        try:
            data = self._read_bytes(path)
        except _ReadError as exc:
            self._failed_read.inc()
            yield beam.pvalue.TaggedOutput(FAILED_TAG, ImageRow.failed(path, ErrorStage.READ,
                                                                       str(exc)))
            return
        self._bytes.update(len(data))
        try:
            pixels = decode_image(data, max_pixels=self._max_pixels)
        except DecodeError as exc:
            self._failed_decode.inc()
            yield beam.pvalue.TaggedOutput(FAILED_TAG, ImageRow.failed(path, ErrorStage.DECODE,
                                                                       str(exc)))
            return
        self._decoded.inc()
        yield DecodedImage(path, pixels)


class _ReadError(Exception):
    """A path that cannot be read; the message is written to the images table."""
