"""Object-storage mistakes stop the launcher within seconds: exit 2 and one line naming the fix
(against closed ports, a port that never answers and moto S3 servers on loopback)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from beam_pipeline.options import DetectClassifyOptions
from beam_pipeline.storage import missing_extra, path_flags, storage_problem
from tests._servers import free_port, moto_s3, silent_listener, venv_env

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("testing", "testing")
GCP_INSTALLED = missing_extra("--input", "gs://bucket/x") is None


def _no_aws_env(tmp_path: Path) -> dict[str, str]:
    """An environment where the AWS credential chain finds nothing: no keys, no profile
    files, no instance metadata."""
    env = {key: value for key, value in venv_env().items() if not key.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true")
    return env


def _options(*args: str) -> DetectClassifyOptions:
    return DetectClassifyOptions(["--output=/tmp/unused", *args])


def test_path_flags_lists_the_set_paths():
    opts = _options("--input=s3://b/in/", "--classifier_model=gs://m/c.keras")
    flags = dict(path_flags(opts))
    assert (flags["--input"], flags["--classifier_model"]) == ("s3://b/in/", "gs://m/c.keras")
    assert "--detector_label_map" not in flags  # unset (None) options are left out


@pytest.mark.parametrize("path, expected", [
    ("data/shots/", None),
    ("file:///data/shots/", None),
    ("s3://bucket/shots/", None),  # the aws extra is installed with the test tools
    ("foo://bucket/shots/", "Beam has no filesystem for foo://"),
])
def test_missing_extra_by_scheme(path, expected):
    problem = missing_extra("--input", path)
    assert problem == expected if expected is None else expected in problem


@pytest.mark.skipif(GCP_INSTALLED, reason="apache-beam[gcp] is installed here")
def test_missing_extra_names_the_project_install_command():
    problem = missing_extra("--output", "gs://bucket/results")
    assert problem.startswith("--output gs://bucket/results: ")
    assert "pip install -e '.[gcp]'" in problem


def test_storage_problem_one_of_two_keys():
    problem = storage_problem(_options("--input=s3://b/in/", "--s3_access_key_id=AKIA"))
    assert "pass both --s3_access_key_id and --s3_secret_access_key" in problem


def test_storage_problem_no_credentials(tmp_path, monkeypatch):
    for key, value in _no_aws_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    for key in [key for key in os.environ if key.startswith("AWS_")]:
        if key not in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
                       "AWS_EC2_METADATA_DISABLED"):
            monkeypatch.delenv(key)
    problem = storage_problem(_options("--input=s3://b/in/"))
    assert "no AWS credentials found" in problem and "--s3_access_key_id" in problem


def test_storage_problem_local_paths_touch_no_store():
    assert storage_problem(_options("--input=data/sample/")) is None


def _launch(args: list[str], env: dict[str, str]) -> tuple[int, list[str], float]:
    """Runs ``python -m beam_pipeline`` as a user would; returns the exit code, the stderr
    lines that start with ``error:`` and the wall time."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "beam_pipeline", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    elapsed = time.monotonic() - start
    return done.returncode, [line for line in done.stderr.splitlines()
                             if line.startswith("error:")], elapsed


def _assert_fails_fast(args: list[str], env: dict[str, str], *words: str) -> None:
    code, errors, elapsed = _launch(args, env)
    assert code == 2, errors
    assert len(errors) == 1, errors
    for word in words:
        assert word in errors[0], errors[0]
    assert elapsed < 30, (elapsed, errors)


def _s3_args(endpoint: str, bucket: str = "shots", *, keys: tuple[str, str] = KEYS) -> list[str]:
    return [f"--input=s3://{bucket}/in/manifest.txt", "--output=/tmp/unused-output",
            f"--s3_endpoint_url={endpoint}", f"--s3_access_key_id={keys[0]}",
            f"--s3_secret_access_key={keys[1]}", "--s3_region_name=us-east-1"]


@pytest.mark.e2e
def test_launcher_s3_without_credentials_exits_2_fast(tmp_path):
    _assert_fails_fast(["--input=s3://my-bucket/shots/manifest.txt", f"--output={tmp_path}/o"],
                       _no_aws_env(tmp_path), "no AWS credentials found",
                       "--s3_access_key_id", "credential chain")


@pytest.mark.e2e
def test_launcher_s3_closed_port_exits_2_fast(tmp_path):
    _assert_fails_fast(_s3_args(f"http://127.0.0.1:{free_port()}"), _no_aws_env(tmp_path),
                       "cannot reach the S3 endpoint", "--s3_endpoint_url")


@pytest.mark.e2e
def test_launcher_s3_endpoint_that_never_answers_exits_2_fast(tmp_path):
    with silent_listener() as port:
        _assert_fails_fast(_s3_args(f"http://127.0.0.1:{port}"), _no_aws_env(tmp_path),
                           "cannot reach the S3 endpoint", "ReadTimeoutError",
                           "--s3_endpoint_url")


@pytest.mark.e2e
def test_launcher_s3_wrong_keys_exits_2_fast(tmp_path):
    pytest.importorskip("moto.server")
    # This server checks access keys against its (empty) IAM from the first request on.
    with moto_s3(tmp_path, INITIAL_NO_AUTH_ACTION_COUNT="0") as url:
        _assert_fails_fast(_s3_args(url, keys=("AKIAWRONG", "wrong")), _no_aws_env(tmp_path),
                           "refused the credentials", "InvalidAccessKeyId",
                           "--s3_access_key_id")


@pytest.mark.e2e
def test_launcher_s3_missing_bucket_exits_2_fast(tmp_path):
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    with moto_s3(tmp_path) as url:
        _assert_fails_fast(_s3_args(url, "no-such-bucket"), _no_aws_env(tmp_path),
                           "--input s3://no-such-bucket/in/manifest.txt",
                           "bucket 'no-such-bucket' does not exist")
        # An existing input bucket and a missing output bucket: the output is named.
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id=KEYS[0], aws_secret_access_key=KEYS[1])
        client.create_bucket(Bucket="shots")
        client.put_object(Bucket="shots", Key="in/manifest.txt", Body=b"a.png\n")
        args = [arg if not arg.startswith("--output") else "--output=s3://no-out/results"
                for arg in _s3_args(url)]
        _assert_fails_fast(args, _no_aws_env(tmp_path), "--output s3://no-out/results",
                           "bucket 'no-out' does not exist", "create the bucket")


@pytest.mark.e2e
@pytest.mark.skipif(GCP_INSTALLED, reason="apache-beam[gcp] is installed here")
def test_launcher_gs_without_extra_exits_2(tmp_path):
    _assert_fails_fast(["--input=gs://bucket/shots/", f"--output={tmp_path}/o"], venv_env(),
                       "pip install -e '.[gcp]'")
