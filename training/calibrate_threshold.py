"""Choose a detector's recommended score threshold on a validation set and write it beside the
SavedModel, where the job reads it when ``--min_score`` is not given.

Usage::

    python -m training.calibrate_threshold [--seed 7777 --num_images 200]

Renders ``--num_images`` validation images with ``--seed`` (refused if it is a training or
evaluation seed of the model card), runs the whole job on them as a plain loop
(``training.offline_eval.run_loop``) at the detector's own score floor, scores the output at
every threshold of a 0.01 grid with ``training.evaluate`` (class-agnostic AP@0.5, rows the
classifier calls ``background`` rejected, as the evaluator does by default) and keeps the rule:

    the highest threshold whose AP@0.5 is within ``--tolerance`` (0.005) of the AP@0.5 at the
    score floor.

A higher threshold would lose defects that the detector ranks correctly; a lower one adds
regions to classify for no gain in AP. The result goes to
``<detector>/assets.extra/score_threshold.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

__all__ = ["EVALUATION_SEEDS", "TRAINING_SEEDS", "calibrate", "choose_threshold", "sweep"]

# Seeds of the model card (models/README.md): never used to choose anything.
TRAINING_SEEDS = (1, 2, 3, 4, 10002)  # detector 1 (earlier stages 3, 4); classifier 2, 10002
EVALUATION_SEEDS = (1000, 2000, 3000, 4000, 5000, 6000)
DEFAULT_SEED = 7777
TOLERANCE = 0.005
GRID = tuple(round(0.05 + 0.01 * k, 2) for k in range(91))  # 0.05 .. 0.95
RULE = ("highest threshold (0.01 grid) whose class-agnostic AP@0.5 on the validation set "
        "(background-labelled rows rejected) is within {tol} of the AP@0.5 at the score floor")


def sweep(table: Any, annotations: dict, thresholds: Sequence[float]) -> list[dict[str, float]]:
    """Scores ``table`` (detection rows, run at a threshold below all of ``thresholds``) as if
    the job had run at each threshold: the rows at or above it, evaluated by
    ``training.evaluate.evaluate``."""
    import pyarrow.compute as pc

    from training.evaluate import evaluate

    results = []
    for threshold in thresholds:
        kept = table.filter(pc.greater_equal(table["detector_score"], np.float32(threshold)))
        metrics = evaluate(kept, annotations)
        results.append({"min_score": float(threshold), "ap50": metrics["ap50"],
                        "recall": metrics["recall50"],
                        "classifier_label_accuracy": metrics["classifier_label_accuracy"],
                        "rows": kept.num_rows})
    return results


def choose_threshold(results: Sequence[dict[str, float]], floor_ap50: float, *,
                     tolerance: float = TOLERANCE) -> dict[str, float]:
    """The entry of ``results`` with the highest ``min_score`` whose ``ap50`` is at least
    ``floor_ap50 - tolerance``.

    Raises:
        ValueError: no entry qualifies (then the floor itself is the threshold to use).
    """
    good = [r for r in results if r["ap50"] >= floor_ap50 - tolerance]
    if not good:
        raise ValueError(f"no threshold keeps AP@0.5 within {tolerance} of {floor_ap50:.4f}")
    return max(good, key=lambda r: r["min_score"])


def calibrate(*, detector_model: str, classifier_model: str, classifier_labels: str,
              seed: int, num_images: int, tolerance: float = TOLERANCE,
              floor: float = 0.0) -> dict[str, Any]:
    """Renders the validation set, runs the loop at ``floor``, sweeps and chooses; returns the
    JSON object to write (without ``written_by``)."""
    import pyarrow as pa

    from training.evaluate import evaluate
    from training.generate import generate_dataset
    from training.offline_eval import list_images, load_models, run_loop
    from transforms.labels import read_labels
    from transforms.model_files import resolve_model_path
    from transforms.records import DETECTIONS_SCHEMA

    if seed in TRAINING_SEEDS or seed in EVALUATION_SEEDS:
        raise ValueError(f"seed {seed} is a training or evaluation seed of the model card; "
                         "choose another")
    detector, classifier = load_models(detector_model, classifier_model)
    labels = read_labels(resolve_model_path(classifier_labels))
    with tempfile.TemporaryDirectory(prefix="calibrate-") as scratch:
        annotations_path = generate_dataset(scratch, num_images, seed)
        with open(annotations_path) as handle:
            annotations = json.load(handle)
        rows = run_loop(list_images(os.path.join(scratch, "images")), detector=detector,
                        classifier=classifier, labels=labels, detector_labels=None,
                        min_score=floor)
    table = pa.Table.from_pylist(rows, schema=DETECTIONS_SCHEMA)
    at_floor = evaluate(table, annotations)
    results = sweep(table, annotations, [t for t in GRID if t > floor])
    chosen = choose_threshold(results, at_floor["ap50"], tolerance=tolerance)
    return {
        "min_score": chosen["min_score"],
        "rule": RULE.format(tol=tolerance),
        "validation": {
            "seed": seed, "num_images": num_images, "num_gt": at_floor["num_gt"],
            "ap50": round(chosen["ap50"], 4), "recall": round(chosen["recall"], 4),
            "classifier_label_accuracy": round(chosen["classifier_label_accuracy"], 4),
            "floor": floor, "ap50_at_floor": round(at_floor["ap50"], 4),
            "recall_at_floor": round(at_floor["recall50"], 4),
            "classifier_model": classifier_model,
        },
        "sweep": [{k: round(v, 4) for k, v in r.items()} for r in results],
    }


def main(argv: Optional[list[str]] = None) -> None:
    from transforms.model_files import (
        DEFAULT_CLASSIFIER,
        DEFAULT_CLASSIFIER_LABELS,
        DEFAULT_DETECTOR,
        SCORE_THRESHOLD_FILE,
        resolve_model_path,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector_model", default=DEFAULT_DETECTOR,
                        help="Local SavedModel folder; the JSON is written inside it.")
    parser.add_argument("--classifier_model", default=DEFAULT_CLASSIFIER)
    parser.add_argument("--classifier_labels", default=DEFAULT_CLASSIFIER_LABELS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="Validation seed; training and evaluation seeds are refused.")
    parser.add_argument("--num_images", type=int, default=200)
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    parser.add_argument("--output", default=None,
                        help=f"Where to write (default: <detector>/{SCORE_THRESHOLD_FILE}).")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = calibrate(detector_model=args.detector_model,
                       classifier_model=args.classifier_model,
                       classifier_labels=args.classifier_labels, seed=args.seed,
                       num_images=args.num_images, tolerance=args.tolerance)
    sweep_rows = result.pop("sweep")
    result["written_by"] = shlex.join(["python", "-m", "training.calibrate_threshold",
                                       *(sys.argv[1:] if argv is None else argv)])
    output = args.output or os.path.join(resolve_model_path(args.detector_model),
                                         SCORE_THRESHOLD_FILE)
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    with open(output, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")
    for row in sweep_rows:
        print(json.dumps(row))
    print(f"wrote {output} in {time.perf_counter() - start:.0f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
