"""Look at a run's results: an HTML review report, a comparison of two sets of runs, and exports
for labelling (COCO, a folder of uncertain crops). Reads the Parquet tables; never imports the
Beam graph."""

from beam_pipeline.report.build import build_report, read_view
from beam_pipeline.report.data import Filters, complete_outputs
from beam_pipeline.report.export import coco_dataset, export_coco, export_review

__all__ = ["Filters", "build_report", "coco_dataset", "complete_outputs", "export_coco",
           "export_review", "read_view"]
