"""The short summary a finished run prints: counts from its run record (every runner writes
one), model loads from Beam's metrics where the runner reports them."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from apache_beam.metrics.metric import MetricsFilter

from transforms.records import ERROR_STAGES, METRICS_NAMESPACE

__all__ = ["collect_metrics", "format_summary"]


def _value(metric):
    """The committed value, else the attempted one: Beam's Spark job server reports only
    attempted values (committed is empty), as do runners without committed metrics."""
    return metric.committed if metric.committed is not None else metric.attempted


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
        values[name] = values.get(name, 0) + (_value(metric) or 0)
    for metric in queried.get("distributions", []):
        name = name_of(metric)
        value = _value(metric)
        if value is not None:
            values[name + ".count"] = values.get(name + ".count", 0) + value.count
            values[name + ".sum"] = values.get(name + ".sum", 0) + value.sum
    return values


def format_summary(values: Mapping[str, float], record: Optional[Mapping[str, Any]],
                   config: Any, *, startup_s: float, run_s: float) -> str:
    """A few lines: images, regions, errors by stage, what was chosen, time, output."""
    counts = (record or {}).get("counts", {})
    errors = counts.get("errors_by_stage", {})
    read = int(counts.get("images_read", 0))
    skipped = int(counts.get("images_skipped", 0))
    lines = [
        f"images:  {read} read, {counts.get('images_ok', 0)} ok, {skipped} skipped as "
        "done; errors by stage: "
        + ", ".join(f"{stage} {errors.get(stage, 0)}"
                    for stage in ERROR_STAGES),
        f"regions: {int(values.get('regions_detected', 0))} detected, "
        f"{counts.get('regions_kept', 0)} kept, {counts.get('regions_classified', 0)} "
        f"classified, {int(values.get('regions_dropped_degenerate', 0))} dropped as degenerate",
    ]
    source = (record or {}).get("min_score", {}).get("source", "")
    detector = (record or {}).get("models", {}).get("detector", {}).get("signature", "")
    lines.append(f"choices: --min_score {config.detect.min_score:g} (from {source})")
    lines.append(f"detector: {detector}")
    if config.run.record.get("running"):
        lines.append(f"running: {config.run.record['running']}")
    if config.run.record.get("skip_done_in", {}).get("patterns"):
        earlier = len(config.run.record["skip_done_in"]["complete_runs_with_this_fingerprint"])
        lines.append(f"skipping: {earlier} earlier complete runs with this fingerprint")
    committed = (record or {}).get("commits")
    if committed:
        size = ("sized to about 10 minutes of work" if committed["every"] == "auto"
                else f"of up to {committed['every']} images")
        lines.append(f"commits: {committed['count']} {size}; "
                     f"resumed: {committed['images_resumed']} images from "
                     f"{int(values.get('commits_resumed', 0))} earlier commits")
    loads = (int(values.get("DetectObjects.load_model_latency_milli_secs.count", 0)),
             int(values.get("ClassifyRegions.load_model_latency_milli_secs.count", 0)))
    if values:
        lines.append(f"models:  detector loaded {loads[0]}x, classifier loaded {loads[1]}x")
    else:
        lines.append("models:  this runner reports no metrics to the launcher; counts above "
                     "come from the run record")
    total = startup_s + run_s
    resumed = int(((record or {}).get("commits") or {}).get("images_resumed", 0))
    rate = (read - resumed) / run_s if run_s > 0 else 0.0  # this attempt's images only
    lines += [
        f"time:    {total:.1f} s ({startup_s:.1f} s start-up and checks, {run_s:.1f} s "
        f"running, {rate:.1f} images/s)",
        f"output:  {config.run.output}/detections/ and images/ (Parquet), run.json "
        f"(run {config.run.run_id})",
    ]
    if record is None:
        lines.append("warning: no run.json was written: the run is not complete")
    return "\n".join(lines)
