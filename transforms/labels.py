"""Label files: the classifier's labels (one per line) and OD API ``label_map.pbtxt``."""

from __future__ import annotations

import re

from apache_beam.io.filesystems import FileSystems

__all__ = ["parse_label_map", "read_label_map", "read_labels"]

_ITEM = re.compile(r"item\s*\{(.*?)\}", re.DOTALL)
_FIELD = re.compile(r"""(\w+)\s*:\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|(-?\d+))""")


def _read_text(path: str) -> str:
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return handle.read().decode("utf-8")


def read_labels(path: str) -> list[str]:
    """Reads one label per line, in the classifier's output order; blank lines are skipped."""
    labels = [line.strip() for line in _read_text(path).splitlines()]
    return [label for label in labels if label]


def parse_label_map(text: str) -> dict[int, str]:
    """Parses an OD API label map (``item { id: 1 name: 'x' display_name: 'y' }``) to
    ``{id: label}``, preferring ``display_name`` over ``name`` (COCO maps keep ids in ``name``).
    """
    labels: dict[int, str] = {}
    for body in _ITEM.findall(text):
        fields = {}
        for key, double, single, number in _FIELD.findall(body):
            fields[key] = number if number else (double or single)
        if "id" not in fields:
            raise ValueError(f"label map item without an id: {body.strip()!r}")
        label = fields.get("display_name") or fields.get("name")
        if label is not None:
            labels[int(fields["id"])] = label
    if not labels:
        raise ValueError("label map has no 'item { id: ... name: ... }' entries")
    return labels


def read_label_map(path: str) -> dict[int, str]:
    """Reads an OD API ``label_map.pbtxt`` from any Beam filesystem."""
    return parse_label_map(_read_text(path))
