"""Label files: the classifier's labels (one per line) and OD API ``label_map.pbtxt``."""

from __future__ import annotations

import re
import unicodedata

from apache_beam.io.filesystems import FileSystems

__all__ = ["BACKGROUND", "LabelError", "check_label", "parse_label_map", "read_label_map",
           "read_labels"]

_BOM = "\ufeff"
# The classifier label for "no object here": its rows are written like any other; the
# evaluator and the COCO export leave them out.
BACKGROUND = "background"


class LabelError(ValueError):
    """A label file the job refuses: a label with control characters, or a duplicate."""


def check_label(label: str) -> str:
    """``label`` unchanged, or LabelError when it holds a NUL, another control character
    (``Cc``) or an invisible format character (``Cf``: bidi overrides, zero-width marks):
    labels become folder names and spreadsheet cells, where those hide or break things."""
    bad = sorted({f"U+{ord(char):04X}" for char in label
                  if unicodedata.category(char) in ("Cc", "Cf")})
    if bad:
        raise LabelError(f"label {label.encode('unicode_escape').decode('ascii')[:80]!r} "
                         f"holds control or invisible characters ({', '.join(bad[:5])}); "
                         "remove them")
    return label


def _no_duplicates(labels, what: str) -> None:
    seen: set = set()
    for label in labels:
        if label in seen:
            raise LabelError(f"{what} {label!r} is listed twice; every {what} must be unique "
                             "(which one would a row mean?)")
        seen.add(label)

_ITEM = re.compile(r"item\s*\{(.*?)\}", re.DOTALL)
_FIELD = re.compile(r"""(\w+)\s*:\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|(-?\d+))""")


def _read_text(path: str) -> str:
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        text = handle.read().decode("utf-8")
    return text.removeprefix(_BOM)  # a BOM (Windows editors) is not part of the first label


def read_labels(path: str) -> list[str]:
    """Reads one label per line, in the classifier's output order; blank lines are skipped, a
    leading BOM is dropped. Raises LabelError for control characters or a duplicate label."""
    labels = [check_label(line.strip()) for line in _read_text(path).splitlines()]
    labels = [label for label in labels if label]
    _no_duplicates(labels, "label")
    return labels


def parse_label_map(text: str) -> dict[int, str]:
    """Parses an OD API label map (``item { id: 1 name: 'x' display_name: 'y' }``) to
    ``{id: label}``, preferring ``display_name`` over ``name`` (COCO maps keep ids in ``name``).
    """
    labels: dict[int, str] = {}
    text = text.removeprefix(_BOM)
    for body in _ITEM.findall(text):
        fields = {}
        for key, double, single, number in _FIELD.findall(body):
            fields[key] = number if number else (double or single)
        if "id" not in fields:
            raise ValueError(f"label map item without an id: {body.strip()!r}")
        label = fields.get("display_name") or fields.get("name")
        if int(fields["id"]) in labels:
            raise LabelError(f"label map id {fields['id']} is listed twice; ids must be unique")
        if label is not None:
            labels[int(fields["id"])] = check_label(label)
    _no_duplicates(labels.values(), "label map name")
    if not labels:
        raise ValueError("label map has no 'item { id: ... name: ... }' entries")
    return labels


def read_label_map(path: str) -> dict[int, str]:
    """Reads an OD API ``label_map.pbtxt`` from any Beam filesystem."""
    return parse_label_map(_read_text(path))
