"""From checked options to the graph's configuration: the run's identity (fingerprint, record),
what an unfinished run in ``--output`` and earlier complete runs contribute, and one group of
settings per step (``beam_pipeline.config``). Reads, never deletes or writes."""

from __future__ import annotations

from beam_pipeline.commits import fingerprint_difference
from beam_pipeline.config import ClassifyConfig, DetectConfig, JobConfig, RunConfig, SelectConfig
from beam_pipeline.errors import ConfigError
from beam_pipeline.options import DetectClassifyOptions
from beam_pipeline.run_identity import row_options, run_identity
from beam_pipeline.runs import complete_outputs
from beam_pipeline.validation import Checked
from transforms.output_folder import table_files
from transforms.tiles import TilingConfig

__all__ = ["plan"]


def plan(opts: DetectClassifyOptions, checked: Checked) -> JobConfig:
    """The configuration of the run ``opts`` asks for, given what validation proved.

    Raises:
        ConfigError: when ``--output`` holds an unfinished run made with other settings (its
            commits' fingerprint differs): one line naming the difference.
    """
    identity = run_identity(
        opts, rows=row_options(opts, min_score=checked.min_score,
                               classify_classes=checked.classify_classes,
                               box_format=checked.box_format),
        min_score_source=checked.min_score_source, labels=checked.labels,
        detector_labels=checked.detector_labels, labels_path=checked.labels_path,
        detector_description=checked.detector_description)
    for commit in checked.commits[:1]:  # every commit of a folder has its first one's fingerprint
        if commit.get("fingerprint") != identity.fingerprint:
            raise ConfigError(
                f"--output {opts.output} holds an unfinished run ({len(checked.commits)} "
                "commits) made with other settings: "
                + fingerprint_difference(commit.get("fingerprint_parts", {}), identity.parts)
                + "; run its own command again to resume it, or pass --overwrite to start "
                "afresh")
        # One run across its attempts: its id and start are the first attempt's.
        identity = identity._replace(run_id=commit["run_id"], record={
            **identity.record, "run_id": commit["run_id"], "started": commit["started"]})
    done = [folder for folder, record in complete_outputs(opts.skip_done_in or [],
                                                          exclude=[opts.output])
            if record.get("fingerprint") == identity.fingerprint]
    record = {**identity.record, "skip_done_in": {
        "patterns": list(opts.skip_done_in or []),
        "complete_runs_with_this_fingerprint": done}}
    copies = opts.model_copies or None
    return JobConfig(
        select=SelectConfig(
            input=checked.input, sample=opts.sample,
            done_tables=tuple(table_files(folder, "images") for folder in done)),
        detect=DetectConfig(
            detector_model=opts.detector_model, max_image_pixels=opts.max_image_pixels,
            min_score=checked.min_score, max_detections=opts.max_detections,
            crop_padding=opts.crop_padding, crop_size=checked.crop_size, model_copies=copies,
            tiling=TilingConfig(opts.tile_size, overlap=opts.tile_overlap,
                                full_image=opts.tile_full_image,
                                batch_size=opts.tile_batch_size) if opts.tile_size else None,
            box_format=checked.box_format,
            classify_detector_classes=checked.classify_classes),
        classify=ClassifyConfig(
            classifier_model=opts.classifier_model, labels=checked.labels,
            batch_size=opts.classifier_batch_size, preprocess=opts.classifier_preprocess,
            safe_mode=not opts.unsafe_keras_deserialization, model_copies=copies,
            detector_labels=checked.detector_labels),
        run=RunConfig(
            output=opts.output, run_id=identity.run_id, fingerprint=identity.fingerprint,
            record=record, num_shards=opts.num_shards,
            max_error_fraction=opts.max_error_fraction, fingerprint_parts=identity.parts,
            commit_every=checked.commit_every))
