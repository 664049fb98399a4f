"""Builds the hostile files of issue 21 (standard library only, nothing committed as a binary).

Used by ``tests/test_hostile.py`` and ``benchmarks/hostile_memory.py``. Each builder writes one
file (or folder) at ``path`` and returns ``path``.
"""

from __future__ import annotations

import json
import os
import struct
import zlib

__all__ = [
    "hdr_named_png",
    "model_folder_with",
    "nested_json",
    "over_byte_limit",
    "pfm",
    "png_of_zeros",
    "random_bytes",
    "sparse_whitespace_json",
    "tiff_with_repeated_width",
]


def _deflate_rows(row: bytes, count: int) -> list[bytes]:
    """``row`` repeated ``count`` times, deflated in blocks of about 8 MB (never all at once)."""
    compressor = zlib.compressobj(6)
    per_block = max(1, (8 << 20) // len(row))
    parts, left = [], count
    while left:
        rows = min(per_block, left)
        parts.append(compressor.compress(row * rows))
        left -= rows
    parts.append(compressor.flush())
    return parts


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_of_zeros(path: str, width: int, height: int) -> str:
    """An 8-bit RGB PNG of black pixels (97 KB at 10000x10000): compressed row by row, so
    building it never holds the decoded image."""
    parts = _deflate_rows(b"\x00" * (1 + 3 * width), height)  # filter byte 0, then pixels
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b""))
    return path


def tiff_with_repeated_width(path: str, width: int = 20000, shown_width: int = 10,
                             height: int = 20000, data_rows: int | None = None) -> str:
    """A deflate-compressed gray TIFF whose IFD lists ImageWidth twice: ``width`` (what
    libtiff decodes by) then ``shown_width`` (what a parser that keeps the last value sees).
    389 KB with all its rows; ``data_rows`` writes only that many (a decoder that goes by the
    header refuses it all the same, and it is built in no time)."""
    strip = b"".join(_deflate_rows(b"\x00" * width, height if data_rows is None else data_rows))
    entries = [(256, 4, 1, width), (256, 4, 1, shown_width), (257, 4, 1, height),
               (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1), (273, 4, 1, 0),
               (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, len(strip))]
    ifd_size = 2 + 12 * len(entries) + 4
    data_at = 8 + ifd_size
    entries = [(tag, kind, count, data_at if tag == 273 else value)
               for tag, kind, count, value in entries]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<H", value) + b"\0\0" if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    with open(path, "wb") as handle:
        handle.write(b"II*\x00" + struct.pack("<I", 8) + ifd + strip)
    return path


def hdr_named_png(path: str, side: int = 12000, lines: int | None = None) -> str:
    """A Radiance HDR (RGBE, run-length encoded) of ``side`` x ``side`` black pixels, whatever
    ``path`` is named (9 MB at 12000); ``lines`` writes only that many scanlines."""
    runs = []
    left = side
    while left:
        run = min(left, 127)
        runs.append(bytes([128 + run, 0]))  # a run of `run` zero bytes
        left -= run
    channel = b"".join(runs)
    scanline = bytes([2, 2, side >> 8, side & 0xFF]) + channel * 4
    header = f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {side} +X {side}\n".encode("ascii")
    with open(path, "wb") as handle:
        handle.write(header)
        for _ in range(side if lines is None else lines):
            handle.write(scanline)
    return path


def pfm(path: str, width: int = 4000, height: int = 4000) -> str:
    """A Portable Float Map header claiming ``width`` x ``height`` colour floats (no data)."""
    with open(path, "wb") as handle:
        handle.write(f"PF\n{width} {height}\n-1.0\n".encode("ascii") + b"\0" * 1200)
    return path


def over_byte_limit(path: str, size: int) -> str:
    """A sparse file of ``size`` bytes that starts like a PNG: costs no disk, only a stat."""
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n")
        handle.truncate(size)
    return path


def nested_json(path: str, depth: int = 100_000) -> str:
    """``[[[[...]]]]`` nested ``depth`` deep: Python's json raises RecursionError on it."""
    with open(path, "w") as handle:
        handle.write("[" * depth + "]" * depth)
    return path


def sparse_whitespace_json(path: str, size: int = 1 << 30) -> str:
    """A ``size``-byte file that holds ``{}`` after whitespace and NULs (sparse: no disk)."""
    with open(path, "wb") as handle:
        handle.write(b" " * 4096)
        handle.truncate(size - 2)
        handle.seek(size - 2)
        handle.write(b"{}")
    return path


def random_bytes(path: str, size: int = 4096, seed: int = 21) -> str:
    """Deterministic noise (a corrupt Parquet part file, for example)."""
    state, out = seed, bytearray()
    while len(out) < size:
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        out += state.to_bytes(8, "little")
    with open(path, "wb") as handle:
        handle.write(bytes(out[:size]))
    return path


def model_folder_with(path: str, kind: str) -> str:
    """A folder shaped like a SavedModel (``saved_model.pb``, ``variables/``) holding one bad
    entry: ``device`` (a link to /dev/zero), ``fifo``, ``outside`` (a link to a file outside
    the folder) or ``inside`` (a link inside it: allowed)."""
    os.makedirs(os.path.join(path, "variables"), exist_ok=True)
    with open(os.path.join(path, "saved_model.pb"), "wb") as handle:
        handle.write(b"\x08\x01")
    bad = os.path.join(path, "variables", "variables.data-00000-of-00001")
    if kind == "device":
        os.symlink("/dev/zero", bad)
    elif kind == "fifo":
        os.mkfifo(bad)
    elif kind == "outside":
        outside = path.rstrip("/") + "-outside.bin"
        with open(outside, "w") as handle:
            json.dump({"secret": True}, handle)
        os.symlink(outside, bad)
    elif kind == "inside":
        os.symlink(os.path.join("..", "saved_model.pb"), bad)
    else:
        raise ValueError(kind)
    return path
