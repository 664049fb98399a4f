"""Object storage: the job reads images, a manifest and models from s3:// and writes Parquet to
s3:// through Beam's own S3 filesystem, against a real S3-compatible server (moto) on loopback."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from beam_pipeline.main import run
from tests._servers import moto_s3, venv_env
from tests.conftest import (
    EXPECTED_BOXES,
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    IMAGES,
    job_args,
    paint_image,
    write_png,
)

pytestmark = pytest.mark.e2e  # runs the job, subprocesses or builds: the slow tier

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

BUCKET = "shots"
KEYS = {"access_key_id": "testing", "secret_access_key": "testing"}


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """A moto S3 server on a free loopback port; yields its URL and stops it afterwards."""
    with moto_s3(tmp_path_factory.mktemp("moto"), AWS_ACCESS_KEY_ID=KEYS["access_key_id"],
                 AWS_SECRET_ACCESS_KEY=KEYS["secret_access_key"]) as url:
        yield url


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id=KEYS["access_key_id"],
        aws_secret_access_key=KEYS["secret_access_key"],
        config=Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 2}))


@pytest.fixture(scope="module")
def bucket(s3, models_dir, tmp_path_factory):
    """Images, a manifest (relative and absolute paths, a duplicate, a comment) and the fake
    models uploaded to one bucket."""
    s3.create_bucket(Bucket=BUCKET)
    local = tmp_path_factory.mktemp("s3_upload")
    for name, colors in IMAGES.items():
        s3.upload_file(write_png(local / name, paint_image(colors)), BUCKET, f"in/{name}")
    s3.put_object(Bucket=BUCKET, Key="in/broken.png", Body=b"this is not an image")
    names = sorted(IMAGES)
    manifest = ["# images to process", names[0], f"s3://{BUCKET}/in/{names[1]}", "",
                names[2], names[0], "broken.png"]
    s3.put_object(Bucket=BUCKET, Key="in/manifest.txt", Body="\n".join(manifest) + "\n")
    for path in (models_dir / "detector").rglob("*"):
        if path.is_file():
            key = "models/detector/" + path.relative_to(models_dir / "detector").as_posix()
            s3.upload_file(str(path), BUCKET, key)
    for name in ("colors.keras", "labels.txt", "label_map.pbtxt"):
        s3.upload_file(str(models_dir / name), BUCKET, f"models/{name}")
    return BUCKET


def _s3_flags(endpoint: str) -> list[str]:
    return [f"--s3_endpoint_url={endpoint}", f"--s3_access_key_id={KEYS['access_key_id']}",
            f"--s3_secret_access_key={KEYS['secret_access_key']}",
            "--s3_region_name=us-east-1"]


def _read_table(s3, prefix: str) -> list[dict]:
    keys = [item["Key"] for item in
            s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]
    assert keys and all(key.endswith(".parquet") for key in keys), keys
    rows = []
    for key in keys:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        rows.extend(pq.read_table(io.BytesIO(body)).to_pylist())
    return sorted(rows, key=lambda row: (row["image_path"], row.get("roi_index", 0)))


def _check_output(s3, out_prefix: str, *, detector_model: str) -> None:
    images = _read_table(s3, f"{out_prefix}/images/")
    expected_paths = sorted(f"s3://{BUCKET}/in/{name}" for name in [*IMAGES, "broken.png"])
    assert [row["image_path"] for row in images] == expected_paths
    for row in images:
        if row["image_path"].endswith("broken.png"):
            assert (row["status"], row["error_stage"]) == ("error", "decode")
        else:
            assert (row["status"], row["width"], row["height"], row["num_detections"]) == (
                "ok", IMAGE_WIDTH, IMAGE_HEIGHT, 3)

    detections = _read_table(s3, f"{out_prefix}/detections/")
    expected = [(f"s3://{BUCKET}/in/{name}", roi, color)
                for name, colors in sorted(IMAGES.items()) for roi, color in enumerate(colors)]
    assert [(r["image_path"], r["roi_index"], r["label"]) for r in detections] == expected
    for row in detections:
        box = (row["box_ymin"], row["box_xmin"], row["box_ymax"], row["box_xmax"])
        assert box == pytest.approx(EXPECTED_BOXES[row["roi_index"]], abs=1e-4)
        assert row["detector_model"] == detector_model


def test_s3_manifest_in_parquet_out_models_from_s3(s3_endpoint, s3, bucket):
    # Everything on s3://: the manifest, the images it names, both models and their labels
    # (copied to a local folder by local_model_path), and the two output tables.
    detector = f"s3://{bucket}/models/detector"
    metrics = run(job_args(f"s3://{bucket}/models", f"s3://{bucket}/in/manifest.txt",
                           f"s3://{bucket}/out/manifest", *_s3_flags(s3_endpoint)))
    _check_output(s3, "out/manifest", detector_model=detector)
    assert metrics["images_read"] == 4  # the duplicate line is read once


def test_s3_glob_input_and_rerun_needs_overwrite(s3_endpoint, s3, bucket, models_dir):
    from beam_pipeline.validation import ConfigError

    args = job_args(models_dir, f"s3://{bucket}/in/*.png", f"s3://{bucket}/out/glob",
                    *_s3_flags(s3_endpoint), detector_label_map=None, classifier_batch_size=None)
    run(args)
    _check_output(s3, "out/glob", detector_model=str(models_dir / "detector"))
    with pytest.raises(ConfigError, match="already holds a run"):
        run(args)


_COPY_MODEL = """
import os, sys
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from transforms.model_files import local_model_path
FileSystems.set_options(PipelineOptions(sys.argv[2:]))
local = local_model_path(sys.argv[1])
assert local == local_model_path(sys.argv[1])  # one copy per process
assert os.path.isfile(os.path.join(local, "saved_model.pb")), os.listdir(local)
print(local)
"""


def test_model_copied_from_s3_is_removed_when_the_process_exits(s3_endpoint, bucket):
    done = subprocess.run(
        [sys.executable, "-c", _COPY_MODEL, f"s3://{bucket}/models/detector",
         *_s3_flags(s3_endpoint)],
        check=False, capture_output=True, text=True, timeout=120, env=venv_env(),
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-2000:]
    local = done.stdout.strip().splitlines()[-1]
    assert os.path.basename(local) == "detector"
    assert not os.path.exists(os.path.dirname(local))
