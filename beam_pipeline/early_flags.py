"""The few flags the entry point needs before Beam, TensorFlow or OpenCV is imported (each logs
or reads its settings at import), parsed the way the job's parser parses them."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NamedTuple, Optional

__all__ = ["EarlyFlags", "early_flags", "switch"]


def switch(value: str) -> bool:
    """Parses the value of an on/off flag given as ``--name=value``.

    The job's on/off flags work bare (``--overwrite``) and with a value (``--overwrite=true``):
    a Dataflow Flex Template launcher passes every parameter as ``--name=value``, which a plain
    ``store_true`` flag refuses.
    """
    word = str(value).strip().lower()
    if word in ("true", "1", "yes"):
        return True
    if word in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


class EarlyFlags(NamedTuple):
    verbose: bool
    max_image_pixels: Optional[int]  # None: not given (or not a number: the job's parser says so)


def early_flags(argv: Sequence[str]) -> EarlyFlags:
    """``--verbose`` and ``--max_image_pixels`` from ``argv``, as parsed values (so
    ``--verbose=yes`` counts); a malformed value reads as not given, and the job's own parser
    refuses it a moment later with its usage line."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--verbose", nargs="?", const=True, default=False, type=switch)
    parser.add_argument("--max_image_pixels", type=int, default=None)
    try:
        parsed, _ = parser.parse_known_args(list(argv))
    except (argparse.ArgumentError, SystemExit):
        return EarlyFlags(verbose=False, max_image_pixels=None)
    return EarlyFlags(verbose=bool(parsed.verbose), max_image_pixels=parsed.max_image_pixels)
