"""The report page: HTML sections from the query records and pictures, poured into the one
template (``template.html``); every value is escaped and every picture is inline."""

from __future__ import annotations

import base64
import html
import importlib.resources
import string
from collections.abc import Iterable, Mapping, Sequence

from beam_pipeline.report.data import Crop, ErrorGroup, LabelChange, Totals
from beam_pipeline.report.pictures import Picture, data_uri

__all__ = ["changes_section", "crop_cards", "errors_section", "figure_img", "render_page",
           "totals_section", "whole_cards"]


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _count_table(title: str, counts: Mapping[str, int], attribute: str) -> str:
    rows = "".join(f'<tr><td>{_e(k)}</td><td class="n" data-{attribute}="{_e(k)}">{v}</td></tr>'
                   for k, v in counts.items()) or '<tr><td colspan="2">none</td></tr>'
    return f"<table><tr><th>{_e(title)}</th><th>count</th></tr>{rows}</table>"


def totals_section(totals: Totals) -> str:
    """Images ok, errors by stage, regions per label and per detector class."""
    summary = {"images": totals.images, "images_ok": totals.images_ok,
               "images_error": totals.images - totals.images_ok,
               "images_without_regions": totals.images_without_regions,
               "regions": totals.regions}
    rows = "".join(f'<tr><td>{_e(k.replace("_", " "))}</td>'
                   f'<td class="n" data-total="{_e(k)}">{v}</td></tr>' for k, v in summary.items())
    return ("<h2>Totals</h2><div class=\"tables\">"
            f"<table><tr><th>images and regions</th><th>count</th></tr>{rows}</table>"
            + _count_table("errors by stage", totals.errors_by_stage, "stage-count")
            + _count_table("regions per label", totals.regions_per_label, "label-count")
            + _count_table("regions per detector class", totals.regions_per_detector_class,
                           "detector-count")
            + "</div>")


def errors_section(groups: Sequence[ErrorGroup]) -> str:
    """Failed images grouped by stage and message, with example paths."""
    if not groups:
        return "<h2>Errors</h2><p>No image failed.</p>"
    rows = "".join(
        f'<tr><td>{_e(g.stage)}</td><td>{_e(g.message)}</td><td class="n">{g.count}</td>'
        f'<td>{"<br>".join(f"<code>{_e(p)}</code>" for p in g.examples)}</td></tr>'
        for g in groups)
    return ("<h2>Errors</h2><table><tr><th>stage</th><th>message</th><th>images</th>"
            f"<th>examples</th></tr>{rows}</table>")


def figure_img(svg: bytes, alt: str) -> str:
    uri = "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")
    return f'<p><img class="chart" src="{uri}" alt="{_e(alt)}"></p>'


def crop_cards(crops: Iterable[Crop], pictures: Mapping[Crop, Picture]) -> str:
    """One card per crop: the picture (or placeholder and reason), path, box and scores."""
    cards = []
    for crop in crops:
        picture = pictures[crop]
        box = ", ".join(f"{v:.0f}" for v in crop.box)
        why = f'<div class="why">{_e(picture.error)}</div>' if picture.error else ""
        cards.append(
            f'<figure class="crop"><img src="{data_uri(picture)}" alt="{_e(crop.label)}">'
            f"<b>{_e(crop.label)}</b> {crop.confidence:.3f}<br>"
            f"detector {_e(crop.detector_label)} {crop.detector_score:.3f}<br>"
            f"box [{box}] (ymin, xmin, ymax, xmax)<br><code>{_e(crop.image_path)}</code>"
            f"#{crop.roi_index}{why}</figure>")
    return f'<div class="cards">{"".join(cards)}</div>' if cards else "<p>none</p>"


def whole_cards(paths: Iterable[str], pictures: Mapping[str, Picture]) -> str:
    """Whole images with their boxes drawn and labelled."""
    cards = []
    for path in paths:
        picture = pictures[path]
        why = f'<div class="why">{_e(picture.error)}</div>' if picture.error else ""
        cards.append(f'<figure class="whole"><img src="{data_uri(picture)}" alt="{_e(path)}">'
                     f"<code>{_e(path)}</code>{why}</figure>")
    return f'<div class="cards">{"".join(cards)}</div>' if cards else ""


def changes_section(counts: Mapping[str, int], other_counts: Mapping[str, int],
                    changes: Sequence[LabelChange], shown: Sequence[LabelChange],
                    crops: Mapping[str, tuple[list[Crop], list[Crop]]],
                    pictures: Mapping[Crop, Picture], other_name: str) -> str:
    """Counts per label in both views and the images whose set of labels changed."""
    rows = "".join(
        f'<tr><td>{_e(label)}</td><td class="n">{counts.get(label, 0)}</td>'
        f'<td class="n">{other_counts.get(label, 0)}</td>'
        f'<td class="n">{counts.get(label, 0) - other_counts.get(label, 0):+d}</td></tr>'
        for label in sorted(set(counts) | set(other_counts)))
    first = f"; the first {len(shown)}" if len(shown) < len(changes) else ""
    parts = [f"<h2>Compared with {_e(other_name)}</h2>",
             ("<table><tr><th>label</th><th>these runs</th><th>other runs</th>"
              f"<th>difference</th></tr>{rows}</table>"),
             (f'<p><span data-total="changed_images">{len(changes)}</span> images in both have '
              f"a different set of labels{first}:</p>")]
    for change in shown:
        mine, theirs = crops[change.image_path]
        parts.append(
            f"<h4><code>{_e(change.image_path)}</code>: "
            f'<span class="changed">{_e(", ".join(change.other_labels) or "no regions")} '
            f'&rarr; {_e(", ".join(change.labels) or "no regions")}</span></h4>'
            f'<div class="pair"><div><b>other runs</b>{crop_cards(theirs, pictures)}</div>'
            f"<div><b>these runs</b>{crop_cards(mine, pictures)}</div></div>")
    return "".join(parts)


def render_page(title: str, meta: str, sections: Sequence[str],
                template: str | None = None) -> str:
    """The whole page: ``template.html`` with the title, a line about the runs and sections."""
    if template is None:
        template = importlib.resources.files("beam_pipeline.report").joinpath(
            "template.html").read_text(encoding="utf-8")
    return string.Template(template).substitute(title=_e(title), meta=meta,
                                                body="\n".join(sections))
