"""The short summary a finished run prints, read from the job's Beam metrics."""

from __future__ import annotations

from apache_beam.metrics.metric import MetricsFilter

from transforms.records import METRICS_NAMESPACE

__all__ = ["collect_metrics", "format_summary"]


def collect_metrics(result) -> dict[str, float]:
    """Committed counters by name, and for distributions ``<name>.count`` / ``<name>.sum``;
    RunInference's metrics are prefixed with their step (``DetectObjects.num_inferences``)."""
    try:
        queried = result.metrics().query(MetricsFilter())
    except Exception:  # pylint: disable=broad-except
        return {}  # some runners report no metrics to the launcher
    values: dict[str, float] = {}

    def name_of(metric) -> str:
        namespace = metric.key.metric.namespace
        prefix = "" if namespace == METRICS_NAMESPACE else namespace + "."
        return prefix + metric.key.metric.name

    for metric in queried.get("counters", []):
        name = name_of(metric)
        values[name] = values.get(name, 0) + (metric.committed or 0)
    for metric in queried.get("distributions", []):
        name = name_of(metric)
        if metric.committed is not None:
            values[name + ".count"] = values.get(name + ".count", 0) + metric.committed.count
            values[name + ".sum"] = values.get(name + ".sum", 0) + metric.committed.sum
    return values


def format_summary(values: dict[str, float], seconds: float, output: str) -> str:
    """A few lines: images, regions, errors by stage, throughput, and where the output is."""
    read = int(values.get("images_read", 0))
    failed = {stage: int(values.get(f"images_failed_{stage}", 0))
              for stage in ("read", "decode", "detect")}
    failed["classify"] = int(values.get("regions_failed_classify", 0))
    loads = (int(values.get("DetectObjects.load_model_latency_milli_secs.count", 0)),
             int(values.get("ClassifyRegions.load_model_latency_milli_secs.count", 0)))
    rate = read / seconds if seconds > 0 else 0.0
    lines = [
        f"images:  {read} read, {int(values.get('images_decoded', 0))} decoded; errors by stage: "
        + ", ".join(f"{stage} {count}" for stage, count in failed.items()),
        f"regions: {int(values.get('regions_detected', 0))} detected, "
        f"{int(values.get('regions_kept', 0))} kept, "
        f"{int(values.get('regions_classified', 0))} classified, "
        f"{int(values.get('regions_dropped_degenerate', 0))} dropped as degenerate",
        f"models:  detector loaded {loads[0]}x, classifier loaded {loads[1]}x",
        f"time:    {seconds:.1f} s, {rate:.1f} images/s",
        f"output:  {output}/detections/ and {output}/images/ (Parquet)",
    ]
    return "\n".join(lines)
