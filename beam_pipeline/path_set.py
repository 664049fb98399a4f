"""A compact set of image paths for the launcher: one 128-bit BLAKE2b digest per path, sorted,
in two numpy arrays (16 bytes a path, whatever its length).

Local runs read the done set of earlier complete runs and a commit run's own committed paths
into the launcher (``beam_pipeline.selection``); as Python strings in a ``set`` that cost about
1.3 KB a path, as digests 16 bytes. Distributed runners keep the keyed join on the workers
(``transforms.skipping``).

A wrong answer needs two different paths with the same 128-bit digest. For n distinct paths
the chance that any two of them collide is at most n(n-1)/2 / 2**128: below 1e-24 for the
2 * 10**7 paths of a 10-million-path archive and its listing, and below 1e-20 for 10**9 paths.
A path is encoded as UTF-8 (``surrogatepass``, so paths decoded with ``surrogateescape`` stay
distinct): the encoding is one-to-one, so only a digest collision can make two paths equal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Optional

import numpy as np

__all__ = ["BATCH", "PathSet", "digests", "read_path_set"]

BATCH = 65536  # paths hashed, and Parquet rows read, at a time
_EMPTY = np.zeros(0, dtype=np.uint64)


def digests(paths: Iterable[str]) -> np.ndarray:
    """The 128-bit digests of ``paths``, in their order: an ``(n, 2)`` uint64 array (high,
    low word)."""
    joined = b"".join(hashlib.blake2b(path.encode("utf-8", "surrogatepass"),
                                      digest_size=16).digest() for path in paths)
    return np.frombuffer(joined, dtype=">u8").astype(np.uint64).reshape(-1, 2)


def _sorted_unique(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """High and low words of the distinct digests, sorted by (high, low)."""
    if not len(words):
        return _EMPTY, _EMPTY
    order = np.lexsort((words[:, 1], words[:, 0]))
    high, low = words[order, 0], words[order, 1]
    keep = np.ones(len(high), dtype=bool)
    keep[1:] = (high[1:] != high[:-1]) | (low[1:] != low[:-1])
    return high[keep], low[keep]


class PathSet:
    """A set of paths kept as sorted 128-bit digests. Build it with ``from_paths`` or
    ``from_digests``; ask it with ``path in s`` or, for many at once, ``contains``."""

    def __init__(self, high: np.ndarray = _EMPTY, low: np.ndarray = _EMPTY):
        self._high, self._low = high, low

    @classmethod
    def from_digests(cls, chunks: Sequence[np.ndarray]) -> "PathSet":
        """The set of the digests in ``chunks`` (arrays from ``digests``), repeats removed."""
        words = np.concatenate(chunks) if chunks else np.zeros((0, 2), dtype=np.uint64)
        return cls(*_sorted_unique(words))

    @classmethod
    def from_paths(cls, paths: Iterable[str]) -> "PathSet":
        return cls.from_digests([digests(batch) for batch in batched(paths, BATCH)])

    def __len__(self) -> int:
        return len(self._high)

    @property
    def nbytes(self) -> int:
        return self._high.nbytes + self._low.nbytes

    def __contains__(self, path: str) -> bool:
        return bool(self.contains(digests([path]))[0])

    def contains(self, words: np.ndarray) -> np.ndarray:
        """A bool per row of ``words`` (from ``digests``): whether the set holds that digest."""
        found = np.zeros(len(words), dtype=bool)
        if not len(self._high) or not len(words):
            return found
        high, low = words[:, 0], words[:, 1]
        first = np.searchsorted(self._high, high, side="left")
        last = np.searchsorted(self._high, high, side="right")
        # Nearly always 0 or 1 digest shares a high word; more are looked at one by one.
        single = (last - first) == 1
        at = np.minimum(first, len(self._high) - 1)
        found[single] = self._low[at[single]] == low[single]
        for row in np.flatnonzero((last - first) > 1):
            found[row] = bool(np.any(self._low[first[row]:last[row]] == low[row]))
        return found


def batched(items: Iterable, size: int) -> Iterator[list]:
    """``items`` in lists of at most ``size``."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _parquet_batches(path: str, columns: list[str]) -> Iterator:
    """Record batches of ``columns`` of one Parquet file, local or through Beam's filesystems
    (which carry the ``--s3_*``/GCS options; such a file is read whole, one at a time)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    from transforms.paths import is_local_path

    if is_local_path(path):
        source = path.removeprefix("file://")
    else:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            source = pa.BufferReader(handle.read())
    yield from pq.ParquetFile(source).iter_batches(batch_size=BATCH, columns=columns)


def read_path_set(files: Sequence[str], *, fingerprint: Optional[str] = None) -> PathSet:
    """The ``image_path`` values of images tables (Parquet ``files``), read in record batches
    of that column only; with ``fingerprint``, only the rows that are ``ok`` with it (the done
    rows ``--skip_done_in`` skips)."""
    import pyarrow.compute as pc

    from transforms.records import STATUS_OK

    columns = ["image_path"] if fingerprint is None else ["image_path", "status", "fingerprint"]
    chunks = []
    for path in files:
        for batch in _parquet_batches(path, columns):
            if fingerprint is not None:
                batch = batch.filter(pc.and_(pc.equal(batch.column("status"), STATUS_OK),
                                             pc.equal(batch.column("fingerprint"), fingerprint)))
            chunks.append(digests(pc.drop_null(batch.column("image_path")).to_pylist()))
    return PathSet.from_digests(chunks)
