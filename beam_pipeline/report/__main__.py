"""``python -m beam_pipeline.report --runs OUTPUT_OR_GLOB [--html FILE] [--compare OTHER]
[--export_coco FILE] [--export_review DIR --below_confidence C]``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

__all__ = ["main", "parse_args"]


def _unit(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m beam_pipeline.report", description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--runs", action="append", required=True,
                        help="output folder or glob of output folders (repeatable); only "
                             "complete runs are read, the newest run of each image wins")
    parser.add_argument("--html", default=None, help="write the report page here")
    parser.add_argument("--compare", action="append", default=None,
                        help="other output folder(s) or glob(s) to compare with")
    parser.add_argument("--per_label", type=int, default=8,
                        help="least and most confident crops shown per label")
    parser.add_argument("--whole_images", type=int, default=3,
                        help="whole images with their boxes shown per label")
    parser.add_argument("--max_changes", type=int, default=20,
                        help="changed images shown with their crops in --compare")
    parser.add_argument("--labels", default=None,
                        help="comma-separated labels for histograms, galleries and exports "
                             "(default: all)")
    parser.add_argument("--min_confidence", type=_unit, default=0.0)
    parser.add_argument("--max_confidence", type=_unit, default=1.0)
    parser.add_argument("--export_coco", default=None,
                        help="write the detections as a COCO dataset with scores (JSON)")
    parser.add_argument("--include_background", action="store_true",
                        help="keep rows labelled 'background' in --export_coco")
    parser.add_argument("--export_review", default=None,
                        help="write crops below --below_confidence into DIR/<label>/ with "
                             "DIR/review.csv")
    parser.add_argument("--below_confidence", type=_unit, default=0.5)
    args = parser.parse_args(argv)
    if not (args.html or args.export_coco or args.export_review):
        parser.error("nothing to do: give --html, --export_coco or --export_review")
    if args.min_confidence > args.max_confidence:
        parser.error("--min_confidence is above --max_confidence")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from beam_pipeline.report.build import build_report, read_view
    from beam_pipeline.report.data import Filters, apply_filters, complete_outputs
    from beam_pipeline.report.export import export_coco, export_review

    args = parse_args(argv)
    start = time.perf_counter()
    outputs = complete_outputs(args.runs)
    if not outputs:
        print(f"error: no complete run in {' '.join(args.runs)}", file=sys.stderr)
        return 2
    labels = frozenset(v.strip() for v in args.labels.split(",")) if args.labels else None
    filters = Filters(labels, args.min_confidence, args.max_confidence)
    done: dict[str, object] = {"runs": outputs}
    if args.html:
        other = complete_outputs(args.compare) if args.compare else None
        if args.compare and not other:
            print(f"error: no complete run in {' '.join(args.compare)}", file=sys.stderr)
            return 2
        page = build_report(outputs, per_label=args.per_label, whole_images=args.whole_images,
                            filters=filters, compare=other, max_changes=args.max_changes)
        os.makedirs(os.path.dirname(os.path.abspath(args.html)), exist_ok=True)
        with open(args.html, "w", encoding="utf-8") as handle:
            handle.write(page)
        done["html"] = args.html
    if args.export_coco or args.export_review:
        images, detections = read_view(outputs)
        detections = apply_filters(detections, filters)
        if args.export_coco:
            done["coco"] = export_coco(images, detections, args.export_coco,
                                       include_background=args.include_background)
        if args.export_review:
            done["review"] = export_review(detections, args.export_review,
                                           args.below_confidence)
    done["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
