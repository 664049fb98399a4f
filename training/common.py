"""What the trainers share: their common flags and the ``training_summary.json`` they write."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

__all__ = ["SUMMARY_FILE", "add_common_flags", "write_summary"]

SUMMARY_FILE = "training_summary.json"


def add_common_flags(parser: argparse.ArgumentParser, *, output: str, seed: int,
                     num_images: int, epochs: int, batch_size: int,
                     learning_rate: float) -> None:
    """Adds ``--output --seed --num_images --epochs --batch_size --learning_rate`` with the
    trainer's own defaults (those of the bundled model it made)."""
    parser.add_argument("--output", default=output)
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--num_images", type=int, default=num_images)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch_size", type=int, default=batch_size)
    parser.add_argument("--learning_rate", type=float, default=learning_rate)


def write_summary(output: str, summary: dict[str, Any], *, model: Any,
                  start: float) -> dict[str, Any]:
    """Adds the parameter count and the seconds since ``start`` (``time.perf_counter()``) to
    ``summary``, writes it to ``output/training_summary.json`` and returns it."""
    summary = {**summary, "parameters": int(model.count_params()),
               "train_seconds": round(time.perf_counter() - start, 1)}
    with open(os.path.join(output, SUMMARY_FILE), "w") as handle:
        json.dump(summary, handle, indent=2)
    return summary
