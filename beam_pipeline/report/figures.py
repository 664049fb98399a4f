"""Histograms drawn by matplotlib (Agg, no display) as SVG bytes: one panel of confidence per
label, and the detector score per detector class. Counts are binned with numpy first, so a
million rows cost one pass."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np

__all__ = ["BINS", "binned", "histogram_svg"]

BINS = np.linspace(0.0, 1.0, 21)


def binned(values: np.ndarray, bins: np.ndarray = BINS) -> np.ndarray:
    """Counts of ``values`` in ``bins`` (the last bin includes 1.0)."""
    counts, _ = np.histogram(np.asarray(values, np.float64), bins=bins)
    return counts


def histogram_svg(counts: Mapping[str, np.ndarray], *, xlabel: str, title: str,
                  bins: np.ndarray = BINS, columns: int = 3) -> bytes:
    """Small multiples: one step histogram per key of ``counts`` (precomputed on ``bins``)."""
    from matplotlib.figure import Figure

    names = list(counts) or ["(no rows)"]
    rows = -(-len(names) // columns)
    cols = min(columns, len(names))
    height = 2.3 * rows + 0.5
    figure = Figure(figsize=(3.2 * cols, height))
    # Fixed margins: a layout engine costs more than the drawing itself.
    figure.subplots_adjust(left=0.55 / (3.2 * cols), right=1 - 0.15 / (3.2 * cols),
                           bottom=0.5 / height, top=1 - 0.55 / height, wspace=0.35, hspace=0.75)
    axes = np.atleast_1d(figure.subplots(rows, cols, squeeze=False).ravel())
    for ax, name in zip(axes, names):
        values = counts.get(name, np.zeros(len(bins) - 1, int))
        ax.stairs(values, bins, fill=True, alpha=0.75)
        ax.set_title(f"{name} (n={int(np.sum(values))})", fontsize=9)
        ax.set_xlim(bins[0], bins[-1])
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("regions", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.yaxis.get_major_locator().set_params(integer=True)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    figure.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()
