"""Transient read failures: which are retried, the backoff, and reads through a loopback S3
server whose proxy fails the first requests for each object."""

from __future__ import annotations

import errno
import random

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from tests._servers import FlakyProxy, moto_s3
from tests.conftest import IMAGES, paint_image, write_png
from transforms.reading import (
    FAILED_TAG,
    ReadAndDecodeFn,
    ReadImagePaths,
    resolve_input,
)
from transforms.records import METRICS_NAMESPACE
from transforms.retrying import (
    RetryPolicy,
    backoff_delays,
    call_with_retries,
    is_transient,
)


def _client_error(status: int, code: str) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": "x"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def _beam_s3_error(status, cause: Exception) -> Exception:
    """What Beam's S3 client raises: S3ClientError(str(e), status) inside ``except``."""
    from apache_beam.io.aws.clients.s3.messages import S3ClientError

    try:
        raise cause
    except Exception as exc:  # noqa: BLE001 - building the chain the client builds
        try:
            raise S3ClientError(str(exc), status)
        except S3ClientError as wrapped:
            return wrapped


def _botocore(name: str) -> Exception:
    from botocore import exceptions

    if name == "EndpointConnectionError":
        return exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    return getattr(exceptions, name)(endpoint_url="http://127.0.0.1:9", error="reset")


@pytest.mark.parametrize("make, expected", [
    (lambda: ConnectionResetError(errno.ECONNRESET, "reset by peer"), True),
    (lambda: TimeoutError("timed out"), True),
    (lambda: OSError(errno.EIO, "I/O error on a network mount"), True),
    (lambda: FileNotFoundError(errno.ENOENT, "gone"), False),
    (lambda: PermissionError(errno.EACCES, "denied"), False),
    (lambda: IsADirectoryError(errno.EISDIR, "folder"), False),
    (lambda: ValueError("bad header"), False),
    (lambda: _client_error(503, "SlowDown"), True),
    (lambda: _client_error(429, "TooManyRequests"), True),
    (lambda: _client_error(500, "InternalError"), True),
    (lambda: _client_error(404, "NoSuchKey"), False),
    (lambda: _client_error(403, "AccessDenied"), False),
    (lambda: _beam_s3_error(503, RuntimeError("x")), True),
    (lambda: _beam_s3_error(404, RuntimeError("Not Found")), False),
    (lambda: _beam_s3_error(None, _botocore("EndpointConnectionError")), True),
    (lambda: _beam_s3_error(None, _botocore("ConnectionClosedError")), True),
    (lambda: _beam_s3_error(None, _botocore("ReadTimeoutError")), True),
    (lambda: _beam_s3_error(None, RuntimeError("bucket name is invalid")), False),
])
def test_is_transient_by_kind(make, expected):
    assert is_transient(make()) is expected


def test_backoff_delays_default_policy_spans_seconds():
    policy = RetryPolicy()
    assert policy.attempts >= 3
    assert backoff_delays(policy) == [0.5, 1.0, 2.0]
    jittered = backoff_delays(policy, random.Random(7))
    assert all(0.5 * d <= j <= 1.5 * d for d, j in zip(backoff_delays(policy), jittered))


def _flaky(failures: list[Exception], result: str = "bytes"):
    calls = []

    def call() -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return result

    return call, calls


def test_call_with_retries_retries_transient_then_returns():
    call, calls = _flaky([ConnectionResetError("reset"), TimeoutError("slow")])
    sleeps, retried = [], []
    result = call_with_retries(call, RetryPolicy(), on_retry=retried.append, sleep=sleeps.append,
                               rng=random.Random(3))
    assert result == "bytes"
    assert len(calls) == 3
    assert [type(exc) for exc in retried] == [ConnectionResetError, TimeoutError]
    assert sleeps == backoff_delays(RetryPolicy(), random.Random(3))[:2]


def test_call_with_retries_raises_permanent_at_once():
    call, calls = _flaky([FileNotFoundError("gone")])
    sleeps = []
    with pytest.raises(FileNotFoundError):
        call_with_retries(call, RetryPolicy(), sleep=sleeps.append)
    assert (len(calls), sleeps) == (1, [])


def test_call_with_retries_gives_up_after_the_last_attempt():
    policy = RetryPolicy(attempts=3)
    call, calls = _flaky([ConnectionResetError(str(n)) for n in range(5)])
    with pytest.raises(ConnectionResetError, match="2"):
        call_with_retries(call, policy, sleep=lambda _: None)
    assert len(calls) == 3


BUCKET = "flaky"
KEYS = ("testing", "testing")


@pytest.fixture(scope="module")
def moto_bucket(tmp_path_factory):
    """A moto server with the test images under ``in/``; yields its URL."""
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    with moto_s3(tmp_path_factory.mktemp("moto")) as url:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id=KEYS[0], aws_secret_access_key=KEYS[1])
        client.create_bucket(Bucket=BUCKET)
        local = tmp_path_factory.mktemp("upload")
        for name, colors in IMAGES.items():
            client.upload_file(write_png(local / name, paint_image(colors)), BUCKET,
                               f"in/{name}")
        yield url


def _read_through(endpoint: str) -> tuple[list[str], dict[str, int]]:
    """Lists and reads the bucket's images through ``endpoint`` in a Beam pipeline; returns
    the paths decoded (checked against every image) and the job's counters."""
    expected = sorted(f"s3://{BUCKET}/in/{name}" for name in IMAGES)
    # The job's options may be registered (required --input/--output): the run parses them.
    options = PipelineOptions([
        "--input=x", "--output=x", f"--s3_endpoint_url={endpoint}",
        f"--s3_access_key_id={KEYS[0]}", f"--s3_secret_access_key={KEYS[1]}",
        "--s3_region_name=us-east-1"])
    pipeline = beam.Pipeline(runner="FnApiRunner", options=options)
    read = (pipeline
            | ReadImagePaths(resolve_input(f"s3://{BUCKET}/in/*.png"))
            | beam.ParDo(ReadAndDecodeFn()).with_outputs(FAILED_TAG, main="images"))
    assert_that(read.images | "Paths" >> beam.Map(lambda image: image.path), equal_to(expected))
    assert_that(read[FAILED_TAG] | "Errors" >> beam.Map(lambda row: row.error),
                equal_to([]), label="NoErrors")
    result = pipeline.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(
        MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]}
    return expected, counters


@pytest.mark.e2e
def test_read_retries_throttled_objects_lose_nothing(moto_bucket, monkeypatch):
    # botocore's own retries off: each 429 reaches the job, and Beam's S3 client does not
    # retry 4xx, so every retry here is the job's.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with FlakyProxy(moto_bucket.removeprefix("http://"), prefix="in/", failures=2,
                    mode="429") as proxy:
        expected, counters = _read_through(proxy.url)
    assert sorted(proxy.failed.values()) == [2] * len(expected)
    assert counters["read_retries"] == 2 * len(expected)
    assert counters["images_decoded"] == len(expected)
    assert counters.get("images_failed_read", 0) == 0


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["503", "reset"])
def test_read_survives_server_errors_and_resets(moto_bucket, mode):
    # With the client's default retries, 5xx and resets are absorbed below the job (botocore
    # retries them at once); whatever reaches the job is retried there. Nothing is lost.
    with FlakyProxy(moto_bucket.removeprefix("http://"), prefix="in/", failures=2,
                    mode=mode) as proxy:
        expected, counters = _read_through(proxy.url)
    assert sorted(proxy.failed.values()) == [2] * len(expected)
    assert counters["images_decoded"] == len(expected)
    assert counters.get("images_failed_read", 0) == 0
