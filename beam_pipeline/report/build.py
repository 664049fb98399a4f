"""Assembles the report from complete runs: reads only the columns it needs, queries them, cuts
only the pictures shown, and returns the page."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pyarrow.compute as pc

from beam_pipeline.report import data, figures, page, pictures
from beam_pipeline.report.data import Crop, Filters

__all__ = ["DETECTION_COLUMNS", "IMAGE_COLUMNS", "build_report", "read_view"]

IMAGE_COLUMNS = ("image_path", "width", "height", "status", "error_stage", "error",
                 "num_detections")
DETECTION_COLUMNS = data.CROP_COLUMNS
ALL = Filters()


def read_view(outputs: Sequence[str]):
    """(images, detections) of the latest view, only the report's columns."""
    return (data.load_view(outputs, "images", IMAGE_COLUMNS),
            data.load_view(outputs, "detections", DETECTION_COLUMNS))


def _binned_by(names, values) -> dict[str, np.ndarray]:
    """Histogram counts of ``values`` per distinct value of ``names`` (dictionary-encoded, so
    a million rows cost one pass per name, not a million string comparisons)."""
    if not len(names):
        return {}
    encoded = pc.dictionary_encode(names).combine_chunks()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    numbers = values.to_numpy()
    return {str(name): figures.binned(numbers[codes == i])
            for i, name in sorted(enumerate(encoded.dictionary.to_pylist()), key=lambda p: p[1])}


def _histograms(detections, filters: Filters) -> list[str]:
    shown = data.apply_filters(detections, filters)
    by_label = _binned_by(shown["label"], shown["confidence"])
    # Detector scores of every region (classified or not) unless a filter narrows the view.
    scored = shown if filters != ALL else detections
    detector = pc.coalesce(scored["detector_label"],
                           pc.cast(scored["detector_class_id"], "string"))
    by_class = _binned_by(detector, scored["detector_score"])
    return [page.figure_img(figures.histogram_svg(by_label, xlabel="classifier confidence",
                                                  title="Confidence per label"),
                            "confidence histograms per label"),
            page.figure_img(figures.histogram_svg(by_class, xlabel="detector score",
                                                  title="Detector score per detector class"),
                            "detector score histograms")]


def _galleries(shown, labels: Sequence[str], per_label: int, whole_images: int):
    """Per label, its least and most confident crops and the images of the least confident
    ones, and those images' paths."""
    gallery: dict[str, tuple[list[Crop], list[Crop], list[str]]] = {}
    whole: dict[str, list[Crop]] = {}
    for label in labels:
        least, most = data.extremes(shown, label, per_label)
        paths = list(dict.fromkeys(c.image_path for c in least))[:whole_images]
        gallery[label] = (least, most, paths)
        for path in paths:
            whole.setdefault(path, [])
    return gallery, whole


class _Comparison(NamedTuple):
    """What differs from another view, and the crops of the images listed."""

    other_shown: Any
    changes: list
    listed: list
    side: dict[str, tuple[list[Crop], list[Crop]]]  # image path: (this view's, the other's)


def _compare(compare: Sequence[str], filters: Filters, images, shown,
             max_changes: int) -> _Comparison:
    other_images, other_detections = read_view(compare)
    other_shown = data.apply_filters(other_detections, filters)
    changes = data.changed_images(images, shown, other_images, other_shown)
    listed = changes[:max_changes]
    paths = [c.image_path for c in listed]
    side = {p: ([], []) for p in paths}
    for crop in data.to_crops(data.rows_of_images(shown, paths)):
        side[crop.image_path][0].append(crop)
    for crop in data.to_crops(data.rows_of_images(other_shown, paths)):
        side[crop.image_path][1].append(crop)
    return _Comparison(other_shown, changes, listed, side)


def _gallery_sections(gallery, counts, crop_pictures, whole_pictures) -> list[str]:
    if not gallery:
        return ["<p>No regions to show.</p>"]
    sections = []
    for label, (least, most, paths) in gallery.items():
        sections += [f"<h3>{html.escape(label)} ({counts[label]} regions)</h3>",
                     f"<h4>{len(least)} least confident</h4>",
                     page.crop_cards(least, crop_pictures),
                     f"<h4>{len(most)} most confident</h4>",
                     page.crop_cards(most, crop_pictures),
                     (f"<h4>{len(paths)} images with the least confident {html.escape(label)}"
                      "</h4>"), page.whole_cards(paths, whole_pictures)]
    return sections


def _meta(outputs: Sequence[str], filters: Filters) -> str:
    """The line under the title: the runs shown and what the filters narrow."""
    described = ", ".join(html.escape(o) for o in outputs) or "no complete run"
    narrowed = []
    if filters.labels is not None:
        narrowed.append("labels " + ", ".join(sorted(filters.labels)))
    if (filters.min_confidence, filters.max_confidence) != (0.0, 1.0):
        narrowed.append(f"confidence {filters.min_confidence:g} to {filters.max_confidence:g}")
    return (f"{len(outputs)} complete run(s): {described}."
            + (f" Histograms and galleries show {html.escape('; '.join(narrowed))}; totals count"
               " everything." if narrowed else ""))


def build_report(outputs: Sequence[str], *, per_label: int = 8, whole_images: int = 3,
                 filters: Filters = ALL, compare: Sequence[str] | None = None,
                 compare_name: str = "", max_changes: int = 20) -> str:
    """The report page for the latest view of ``outputs`` (complete output folders, oldest run
    first): totals, histograms, errors, a gallery per label of the ``per_label`` least and most
    confident crops and ``whole_images`` images with their boxes; with ``compare``, what
    differs from that view."""
    images, detections = read_view(outputs)
    shown = data.apply_filters(detections, filters)
    counts = data.label_counts(shown)
    gallery, whole = _galleries(shown, sorted(counts), per_label, whole_images)
    wanted = [c for least, most, _ in gallery.values() for c in least + most]
    if whole:  # every box of the images drawn, whatever the filter
        for crop in data.to_crops(data.rows_of_images(detections, list(whole))):
            whole[crop.image_path].append(crop)
    compared = None
    if compare is not None:
        compared = _compare(compare, filters, images, shown, max_changes)
        wanted += [c for mine, theirs in compared.side.values() for c in mine + theirs]
    crop_pictures, whole_pictures = pictures.render_pictures(wanted, whole)
    changes_html = "" if compared is None else page.changes_section(
        counts, data.label_counts(compared.other_shown), compared.changes, compared.listed,
        compared.side, crop_pictures, compare_name or ", ".join(compare))
    sections = [page.totals_section(data.totals(images, detections)),
                "<h2>Confidence and detector score</h2>", *_histograms(detections, filters),
                page.errors_section(data.error_groups(images)), changes_html,
                "<h2>Gallery per label</h2>",
                *_gallery_sections(gallery, counts, crop_pictures, whole_pictures)]
    return page.render_page("Detections report", _meta(outputs, filters), sections)
