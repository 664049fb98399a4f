"""The report, the comparison and the exports: queries on small Parquet outputs written here,
pictures cut from real files, COCO results checked with pycocotools, and (e2e) the page of a
real run opened in headless Chromium."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from beam_pipeline.report import data
from beam_pipeline.report.__main__ import main as report_main
from beam_pipeline.report.build import build_report
from beam_pipeline.report.export import coco_dataset, export_review
from beam_pipeline.report.pictures import cut_crop
from tests.conftest import paint_image, write_png
from transforms.boxes import crop_box
from transforms.records import DETECTIONS_SCHEMA, IMAGES_SCHEMA

RUN_1 = "20260101T000000.000000Z-00000001"
RUN_2 = "20260102T000000.000000Z-00000002"
_DEFAULTS = {"roi_index": 0, "detector_class_id": 1, "detector_label": "defect",
             "detector_score": 0.9, "class_id": 0, "detector_model": "d",
             "classifier_model": "c", "fingerprint": "f", "classified": True,
             "status": "ok", "num_detections": 0, "width": 200, "height": 100}


def _det(path, roi, label, confidence, box=(10.0, 20.0, 40.0, 60.0), **extra):
    return {"image_path": path, "roi_index": roi, "label": label, "confidence": confidence,
            "box_ymin": box[0], "box_xmin": box[1], "box_ymax": box[2], "box_xmax": box[3],
            **extra}


def _table(rows, schema, run_id):
    full = [{f.name: row.get(f.name, _DEFAULTS.get(f.name, run_id if f.name == "run_id"
                                                     else None)) for f in schema}
            for row in rows]
    return pa.Table.from_pylist(full, schema=schema)


def write_output(folder, images, detections, run_id=RUN_1):
    """A finished run as the job leaves it: both tables, _SUCCESS and a complete run.json."""
    counts = {}
    for row in detections:
        counts[row["image_path"]] = counts.get(row["image_path"], 0) + 1
    images = [{"num_detections": counts.get(row["image_path"], 0), **row} for row in images]
    for name, rows, schema in (("images", images, IMAGES_SCHEMA),
                               ("detections", detections, DETECTIONS_SCHEMA)):
        os.makedirs(folder / name, exist_ok=True)
        pq.write_table(_table(rows, schema, run_id), folder / name / "part-00000.parquet")
    (folder / "_SUCCESS").write_text("")
    (folder / "run.json").write_text(json.dumps({"version": 1, "run_id": run_id,
                                                 "status": "complete"}))
    return str(folder)


@pytest.fixture()
def scene(tmp_path):
    """Three painted images (one deleted after the run, one replaced by text) and a failure."""
    src = tmp_path / "src"
    src.mkdir()
    paths = [write_png(src / f"{n}.png", paint_image(("red", "green", "blue"))) for n in "abc"]
    images = [{"image_path": p} for p in paths] + [
        {"image_path": str(src / "bad.png"), "status": "error", "error_stage": "decode",
         "error": "not an image", "width": None, "height": None},
        {"image_path": str(src / "bad2.png"), "status": "error", "error_stage": "decode",
         "error": "not an image", "width": None, "height": None},
        {"image_path": str(src / "gone.png"), "status": "error", "error_stage": "read",
         "error": "missing", "width": None, "height": None}]
    detections = [
        _det(paths[0], 0, "red", 0.95), _det(paths[0], 1, "green", 0.40, (50, 100, 90, 180)),
        _det(paths[1], 0, "red", 0.60), _det(paths[1], 1, "red", 0.99, (50, 100, 90, 180)),
        _det(paths[2], 0, "blue", 0.30, detector_label=None, detector_class_id=3)]
    output = write_output(tmp_path / "out", images, detections)
    os.remove(paths[1])
    with open(paths[2], "wb") as handle:
        handle.write(b"no longer an image")
    return output, paths, tmp_path


def test_report_never_imports_the_graph_or_tensorflow():
    import subprocess
    import sys

    code = ("import sys, beam_pipeline.report.__main__, beam_pipeline.report.build; "
            "print(sorted(m for m in sys.modules if m in ('beam_pipeline.pipeline', "
            "'beam_pipeline.main', 'transforms.detection', 'transforms.classification', "
            "'tensorflow', 'keras')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.strip() == "[]"


def test_totals_count_images_errors_and_regions(scene):
    output, _, _ = scene
    images, detections = data.load_view([output], "images"), data.load_view([output],
                                                                             "detections")
    totals = data.totals(images, detections)
    assert (totals.images, totals.images_ok, totals.regions) == (6, 3, 5)
    assert totals.errors_by_stage == {"decode": 2, "read": 1}
    assert totals.regions_per_label == {"red": 3, "blue": 1, "green": 1}
    assert totals.regions_per_detector_class == {"defect": 4, "3": 1}
    assert totals.images_without_regions == 0


def test_error_groups_by_stage_and_message(scene):
    groups = data.error_groups(data.load_view([scene[0]], "images"), examples=1)
    assert [(g.stage, g.message, g.count, len(g.examples)) for g in groups] == [
        ("decode", "not an image", 2, 1), ("read", "missing", 1, 1)]
    assert groups[0].examples[0].endswith("bad.png")


def test_extremes_least_and_most_confident(scene):
    detections = data.load_view([scene[0]], "detections")
    least, most = data.extremes(detections, "red", 2)
    assert [c.confidence for c in least] == pytest.approx([0.60, 0.95])
    assert [c.confidence for c in most] == pytest.approx([0.99, 0.95])
    assert data.extremes(detections, "purple", 2) == ([], [])


def test_apply_filters_label_and_confidence_range(scene):
    detections = data.load_view([scene[0]], "detections")
    shown = data.apply_filters(detections, data.Filters(frozenset({"red", "blue"}), 0.3, 0.9))
    assert sorted(shown["confidence"].to_pylist()) == pytest.approx([0.30, 0.60])


def test_load_view_newest_run_of_each_image_wins(tmp_path):
    old = write_output(tmp_path / "old", [{"image_path": "a"}, {"image_path": "b"}],
                       [_det("a", 0, "red", 0.9), _det("a", 1, "red", 0.8),
                        _det("b", 0, "blue", 0.7)], RUN_1)
    new = write_output(tmp_path / "new", [{"image_path": "a"}], [_det("a", 0, "green", 0.5)],
                       RUN_2)
    (tmp_path / "unfinished" / "images").mkdir(parents=True)
    view = data.load_view(data.complete_outputs([str(tmp_path / "*")]), "detections",
                          ["image_path", "label"])
    assert sorted(zip(view["image_path"].to_pylist(), view["label"].to_pylist())) == [
        ("a", "green"), ("b", "blue")]
    assert data.complete_outputs([str(tmp_path / "*")]) == [old, new]


def test_changed_images_lists_images_whose_label_set_changed(tmp_path):
    images = [{"image_path": p} for p in "abcd"]
    mine = write_output(tmp_path / "a", images, [
        _det("a", 0, "red", 0.9), _det("b", 0, "red", 0.9), _det("b", 1, "blue", 0.9),
        _det("c", 0, "red", 0.9)])
    theirs = write_output(tmp_path / "b", images, [
        _det("a", 0, "red", 0.5), _det("a", 1, "red", 0.5), _det("b", 0, "blue", 0.9),
        _det("d", 0, "green", 0.9)])
    view = [(data.load_view([o], "images"), data.load_view([o], "detections"))
            for o in (mine, theirs)]
    changes = data.changed_images(*view[0], *view[1])
    assert [(c.image_path, c.labels, c.other_labels) for c in changes] == [
        ("b", ("blue", "red"), ("blue",)), ("c", ("red",), ()), ("d", (), ("green",))]


def test_cut_crop_is_the_runtime_crop(scene):
    image = paint_image(("red", "green", "blue"))
    box = (10.4, 20.6, 39.2, 61.0)
    native = cut_crop(image, box, longest=None)
    np.testing.assert_array_equal(native, crop_box(image, np.array(box, np.float32)))
    assert max(cut_crop(image, box).shape[:2]) == 96


def test_report_page_inlines_pictures_and_explains_placeholders(scene):
    output, paths, _ = scene
    page = build_report([output], per_label=2, whole_images=2)
    sources = re.findall(r'<img[^>]*src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "cannot read" in page and os.path.basename(paths[1]) in page
    assert "cannot decode" in page
    assert 'data-total="regions">5<' in page
    assert 'data-label-count="red">3<' in page


@pytest.mark.parametrize("case", ["errors_only", "no_detections"])
def test_report_cli_on_outputs_without_regions(tmp_path, case, capsys):
    images = [{"image_path": "x.png", "status": "error", "error_stage": "read",
               "error": "gone"}]
    if case == "no_detections":
        images.append({"image_path": "y.png"})
    output = write_output(tmp_path / "out", images, [])
    html_path = tmp_path / "r.html"
    assert report_main(["--runs", output, "--html", str(html_path), "--export_coco",
                        str(tmp_path / "c.json"), "--export_review",
                        str(tmp_path / "review")]) == 0
    page = html_path.read_text()
    assert 'data-total="regions">0<' in page and "No regions to show" in page
    assert f'data-total="images_without_regions">{int(case == "no_detections")}<' in page
    coco = json.loads((tmp_path / "c.json").read_text())
    assert coco["annotations"] == [] and len(coco["images"]) == (case == "no_detections")
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["review"]["crops"] == 0


def test_report_cli_without_a_complete_run_exits_2(tmp_path, capsys):
    (tmp_path / "out" / "images").mkdir(parents=True)
    assert report_main(["--runs", str(tmp_path / "out"), "--html",
                        str(tmp_path / "r.html")]) == 2
    assert "no complete run" in capsys.readouterr().err


def test_export_review_one_folder_per_label_with_csv(scene):
    output, paths, tmp_path = scene
    detections = data.load_view([output], "detections")
    counts = export_review(detections, str(tmp_path / "review"), 0.7)
    assert counts == {"crops": 1, "failed": 2, "labels": 3}
    assert sorted(os.listdir(tmp_path / "review")) == ["blue", "green", "red", "review.csv"]
    with open(tmp_path / "review" / "review.csv", newline="") as handle:
        rows = {(r["image_path"], int(r["roi_index"])): r for r in csv.DictReader(handle)}
    written = rows[(paths[0], 1)]
    assert written["file"].startswith("green/") and written["error"] == ""
    picture = cv2.cvtColor(cv2.imread(str(tmp_path / "review" / written["file"])),
                           cv2.COLOR_BGR2RGB)
    expected = crop_box(paint_image(("red", "green", "blue")),
                        np.array([50, 100, 90, 180], np.float32))
    np.testing.assert_array_equal(picture, expected)
    assert rows[(paths[1], 0)]["file"] == "" and "cannot read" in rows[(paths[1], 0)]["error"]
    assert "cannot decode" in rows[(paths[2], 0)]["error"]


def _noisy_detections(annotations, seed):
    """Ground-truth boxes jittered, some relabelled, plus false positives: rows as the job
    writes them (pixel ymin, xmin, ymax, xmax)."""
    rng = np.random.default_rng(seed)
    names = {c["id"]: c["name"] for c in annotations["categories"]}
    files = {im["id"]: im["file_name"] for im in annotations["images"]}
    labels = [*names.values(), "background"]
    rows = []
    for a in annotations["annotations"]:
        x, y, w, h = a["bbox"]
        d = rng.uniform(-0.2, 0.2, 4) * [h, w, h, w]
        label = names[a["category_id"]] if rng.random() < 0.8 else str(rng.choice(labels))
        rows.append((files[a["image_id"]], [y + d[0], x + d[1], y + h + d[2], x + w + d[3]],
                     label))
    for file_name in files.values():
        for _ in range(2):
            y, x = rng.uniform(0, 400, 2)
            rows.append((file_name, [y, x, y + 30, x + 40], str(rng.choice(labels))))
    return [_det(os.path.join("/data/images", path), i, label, float(rng.uniform(0.3, 1)),
                 tuple(box), detector_score=float(rng.uniform(0.3, 1)))
            for i, (path, box, label) in enumerate(rows)]


def _pycocotools_ap(gt_dict, results, use_cats):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = gt_dict
    gt.createIndex()
    evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
    evaluation.params.useCats = use_cats
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return evaluation


def _coco_results_for(export, annotations, *, agnostic):
    """The export's results mapped onto the ground truth's image and category ids."""
    by_name = {os.path.basename(im["file_name"]): im["id"] for im in annotations["images"]}
    image_ids = {im["id"]: by_name[os.path.basename(im["file_name"])] for im in export["images"]}
    cat_ids = {c["name"]: c["id"] for c in annotations["categories"]}
    names = {c["id"]: c["name"] for c in export["categories"]}
    results = []
    for a in export["annotations"]:
        if agnostic:
            results.append({"image_id": image_ids[a["image_id"]], "category_id": 1,
                            "bbox": a["bbox"], "score": a["detector_score"]})
        elif names[a["category_id"]] in cat_ids:
            results.append({"image_id": image_ids[a["image_id"]], "bbox": a["bbox"],
                            "category_id": cat_ids[names[a["category_id"]]],
                            "score": a["score"]})
    return results


def check_coco_export(export, annotations, detections_table, capsys=None):
    """``loadRes`` takes the export, and its AP against the ground truth is evaluate's."""
    from pycocotools.coco import COCO

    from training.evaluate import evaluate

    coco = COCO()
    coco.dataset = export
    coco.createIndex()
    loaded = coco.loadRes(export["annotations"])
    assert len(loaded.getAnnIds()) == len(export["annotations"])
    reference = evaluate(detections_table, annotations)
    agnostic_gt = {**annotations, "categories": [{"id": 1, "name": "defect"}],
                   "annotations": [dict(a, category_id=1) for a in annotations["annotations"]]}
    agnostic = _pycocotools_ap(agnostic_gt, _coco_results_for(export, annotations,
                                                               agnostic=True), 1)
    assert agnostic.stats[0] == pytest.approx(reference["ap"], abs=1e-6)
    assert agnostic.stats[1] == pytest.approx(reference["ap50"], abs=1e-6)
    per_class = _pycocotools_ap(annotations, _coco_results_for(export, annotations,
                                                               agnostic=False), 1)
    precision = per_class.eval["precision"]
    for k, cat_id in enumerate(per_class.params.catIds):
        name = next(c["name"] for c in annotations["categories"] if c["id"] == cat_id)
        values = precision[:, :, k, 0, -1]
        ap = float(values[values > -1].mean()) if (values > -1).any() else float("nan")
        assert ap == pytest.approx(reference["per_class"][name]["ap"], abs=1e-6, nan_ok=True)
    return reference


def test_coco_export_loads_and_scores_as_evaluate(tmp_path):
    from training.generate import generate_dataset

    with open(generate_dataset(str(tmp_path / "data"), 4, seed=4343)) as handle:
        annotations = json.load(handle)
    detections = _noisy_detections(annotations, seed=1)
    images = [{"image_path": os.path.join("/data/images", im["file_name"]),
               "width": im["width"], "height": im["height"]} for im in annotations["images"]]
    output = write_output(tmp_path / "out", images, detections)
    table = data.load_view([output], "detections")
    export = coco_dataset(data.load_view([output], "images"), table)
    assert {c["name"] for c in export["categories"]} <= {
        "particle", "scratch", "stain", "bridge", "void"}
    assert [im["file_name"] for im in export["images"]] == sorted(
        im["file_name"] for im in annotations["images"])
    reference = check_coco_export(export, annotations, table)
    assert 0 < reference["ap"] < 1


def test_finetune_reads_labels_from_folders(tmp_path):
    from training.finetune import read_review_folder

    for folder, color in (("red", (0, 0, 255)), ("blue", (255, 0, 0))):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "x.png"), np.full((7, 12, 3), color, np.uint8))
    (tmp_path / "empty").mkdir()
    (tmp_path / "_unsure").mkdir()  # ignored: crops nobody could name
    shutil.copy(tmp_path / "red" / "x.png", tmp_path / "_unsure" / "x.png")
    crops, ids = read_review_folder(str(tmp_path), ["red", "green", "blue"])
    assert crops.shape == (2, 64, 64, 3) and ids.tolist() == [2, 0]
    assert crops[0, 0, 0].tolist() == [0, 0, 255] and crops[1, 0, 0].tolist() == [255, 0, 0]
    (tmp_path / "purple").mkdir()
    shutil.copy(tmp_path / "red" / "x.png", tmp_path / "purple" / "x.png")
    with pytest.raises(ValueError, match="purple"):
        read_review_folder(str(tmp_path), ["red", "green", "blue"])


# ---- end to end: the real job on generated images, the page in a real browser ----

@pytest.fixture(scope="module")
def generated_runs(tmp_path_factory):
    """Two runs of the job with the bundled models over generated images (the second at a
    higher --min_score), then one source image deleted and one broken file among the inputs."""
    from beam_pipeline.main import run
    from training.generate import generate_dataset

    root = tmp_path_factory.mktemp("generated")
    with open(generate_dataset(str(root / "data"), 6, seed=4343)) as handle:
        annotations = json.load(handle)
    (root / "data" / "images" / "broken.png").write_bytes(b"not an image")
    for name, score in (("low", "0.3"), ("high", "0.6")):
        run([f"--input={root / 'data' / 'images'}", f"--output={root / name}",
             f"--min_score={score}"])
    missing = root / "data" / "images" / annotations["images"][0]["file_name"]
    missing.unlink()
    return root, annotations, str(missing)


def _browser():
    """Headless Chromium driven by Selenium, or a skip with the reason."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (requirements-test.lock)")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("no browser: apt-get install chromium chromium-driver (.ci/run tries)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,2000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.e2e
def test_report_in_headless_browser(generated_runs, tmp_path):
    root, _, missing = generated_runs
    html_path = tmp_path / "report.html"
    assert report_main(["--runs", str(root / "low"), "--compare", str(root / "high"),
                        "--html", str(html_path), "--per_label", "3"]) == 0
    browser = _browser()
    try:
        browser.get(html_path.as_uri())
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        widths = browser.execute_script(
            "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        shown = browser.execute_script(
            "const v = {}; document.querySelectorAll('[data-total],[data-label-count],"
            "[data-stage-count]').forEach(e => { const k = e.dataset.total ?? "
            "('label:' + (e.dataset.labelCount ?? '')) ; v[e.dataset.stageCount !== undefined"
            " ? 'stage:' + e.dataset.stageCount : k] = Number(e.textContent) }); return v")
        text = browser.find_element("tag name", "body").text
    finally:
        browser.quit()
    assert errors == []
    assert widths and min(widths) > 0, widths
    images = ds.dataset(str(root / "low" / "images"), format="parquet").to_table().to_pylist()
    detections = ds.dataset(str(root / "low" / "detections"), format="parquet").to_table(
        columns=["label"]).column(0).to_pylist()
    assert shown["images"] == len(images) == 7
    assert shown["images_ok"] == sum(r["status"] == "ok" for r in images) == 6
    assert shown["stage:decode"] == 1
    assert shown["regions"] == len(detections) > 0
    for label in set(detections):
        assert shown[f"label:{label}"] == detections.count(label)
    assert shown["images_without_regions"] == sum(
        r["status"] == "ok" and r["num_detections"] == 0 for r in images)
    assert shown["changed_images"] >= 0
    assert os.path.basename(missing) in text and "cannot read" in text


@pytest.mark.e2e
def test_coco_export_of_a_job_scores_as_evaluate(generated_runs, tmp_path):
    root, annotations, _ = generated_runs
    assert report_main(["--runs", str(root / "low"), "--export_coco",
                        str(tmp_path / "coco.json")]) == 0
    export = json.loads((tmp_path / "coco.json").read_text())
    table = ds.dataset(str(root / "low" / "detections"), format="parquet").to_table()
    reference = check_coco_export(export, annotations, table)
    assert reference["ap50"] > 0.5
