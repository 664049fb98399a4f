"""Launcher-side checks of object stores: each mistake fails in seconds with one line.

Beam's filesystems retry every store call with backoff for minutes, which is right on the
workers (transient faults) and wrong in the launcher, where no credentials, a wrong endpoint or
a missing bucket would make a scheduled job hang instead of fail. These checks run first, with
short timeouts and one retry, and return a message; ``validation.validate`` raises it.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, S3Options

__all__ = ["PROBE_ATTEMPTS", "PROBE_CONNECT_TIMEOUT_S", "PROBE_READ_TIMEOUT_S",
           "missing_extra", "path_flags", "s3_problem", "storage_problem"]

PROBE_CONNECT_TIMEOUT_S = 3.0
PROBE_READ_TIMEOUT_S = 5.0
PROBE_ATTEMPTS = 2  # total, per call: one retry for a transient blip

# The install command that brings each scheme's Beam filesystem (with this project's pins).
_INSTALL = {
    "gs": "pip install -e '.[gcp]'",
    "s3": "pip install -e '.[aws]'",
    "azfs": "pip install 'apache-beam[azure]'",
    "hdfs": "pip install hdfs",
}
# A module each scheme's filesystem needs at first use: Beam registers S3 even without boto3.
_CLIENT_MODULE = {"s3": "boto3", "gs": "google.cloud.storage"}
_PATH_FLAGS = ("input", "output", "detector_model", "detector_label_map", "classifier_model",
               "classifier_labels")
_CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                               "ExpiredToken", "TokenRefreshRequired", "InvalidSecurity"})
_REGION_CODES = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed",
                           "IllegalLocationConstraintException"})
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def path_flags(options: PipelineOptions) -> Iterator[tuple[str, str]]:
    """The job's path options that are set, as (``--flag``, value); ``options`` is the job's
    view (``DetectClassifyOptions``)."""
    for name in _PATH_FLAGS:
        value = getattr(options, name, None)
        if isinstance(value, str) and value:
            yield f"--{name}", value


def _scheme(path: str) -> str | None:
    match = _SCHEME.match(path)
    return match.group(1).lower() if match else None


def missing_extra(flag: str, path: str) -> str | None:
    """A message when ``path``'s scheme has no usable Beam filesystem here, else None."""
    scheme = _scheme(path)
    if scheme is None or scheme == "file":
        return None
    install = _INSTALL.get(scheme)
    try:
        FileSystems.get_filesystem(path)
    except ValueError:
        if install is None:
            return (f"{flag} {path}: Beam has no filesystem for {scheme}:// (it knows local "
                    "paths, gs://, s3://, azfs:// and hdfs:// with their extras); check the path")
        return (f"{flag} {path}: Beam's {scheme}:// filesystem is not installed; "
                f"run {install}")
    module = _CLIENT_MODULE.get(scheme)
    if module is not None and not _installed(module):
        return f"{flag} {path}: {scheme}:// needs {module}, which is not installed; run {install}"
    return None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _bucket(path: str) -> str:
    return path.split("://", 1)[1].split("/", 1)[0]


def _endpoint_words(s3: S3Options) -> str:
    if s3.s3_endpoint_url:
        return f"the S3 endpoint {s3.s3_endpoint_url}"
    return f"AWS S3 (region {s3.s3_region_name or 'from the credential chain'})"


def _client(s3: S3Options):
    """A boto3 client configured like Beam's (``apache_beam.io.aws.clients.s3``) but with short
    timeouts and ``PROBE_ATTEMPTS`` attempts."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=PROBE_CONNECT_TIMEOUT_S, read_timeout=PROBE_READ_TIMEOUT_S,
                    retries={"total_max_attempts": PROBE_ATTEMPTS, "mode": "standard"})
    return boto3.session.Session().client(
        "s3", region_name=s3.s3_region_name, api_version=s3.s3_api_version,
        use_ssl=not s3.s3_disable_ssl, verify=s3.s3_verify, endpoint_url=s3.s3_endpoint_url,
        aws_access_key_id=s3.s3_access_key_id, aws_secret_access_key=s3.s3_secret_access_key,
        aws_session_token=s3.s3_session_token, config=config)


def _no_credentials(flag: str, path: str) -> str:
    return (f"{flag} {path}: no AWS credentials found; pass --s3_access_key_id and "
            "--s3_secret_access_key, or set up the AWS credential chain (AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials, or an instance role)")


def _probe_bucket(client, s3: S3Options, flag: str, path: str) -> str | None:
    """Lists at most one key of ``path``'s bucket; a message for what went wrong, or None."""
    from botocore import exceptions

    bucket = _bucket(path)
    where = _endpoint_words(s3)
    try:
        client.list_objects_v2(Bucket=bucket, MaxKeys=1)
    except exceptions.NoCredentialsError:
        return _no_credentials(flag, path)
    except (exceptions.EndpointConnectionError, exceptions.ConnectTimeoutError,
            exceptions.ReadTimeoutError, exceptions.ConnectionClosedError) as exc:
        hint = ("check --s3_endpoint_url (host, port, http or https) or the network"
                if s3.s3_endpoint_url else
                "check the network, or pass --s3_endpoint_url for an S3-compatible store")
        return (f"{flag} {path}: cannot reach {where} ({type(exc).__name__}, "
                f"{PROBE_ATTEMPTS} attempts, {PROBE_READ_TIMEOUT_S:g} s timeout); {hint}")
    except exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchBucket", "404") or status == 404:
            return (f"{flag} {path}: bucket {bucket!r} does not exist at {where}; check the "
                    "bucket name" + (" or create the bucket" if flag == "--output" else ""))
        if code in _CREDENTIAL_CODES:
            return (f"{flag} {path}: {where} refused the credentials ({code}); check "
                    "--s3_access_key_id, --s3_secret_access_key and --s3_session_token, or "
                    "the keys of the AWS credential chain")
        if code in _REGION_CODES:
            return (f"{flag} {path}: bucket {bucket!r} is in another region ({code}); pass "
                    "--s3_region_name with the bucket's region")
        if code in ("AccessDenied", "403") or status == 403:
            return None  # may list nothing but read objects: the checks that follow decide
        message = str(error.get("Message", "")).splitlines()[0] if error.get("Message") else ""
        return f"{flag} {path}: {where} answered {status} {code} {message}".rstrip()
    return None


def s3_problem(options: PipelineOptions, paths: list[tuple[str, str]]) -> str | None:
    """Checks credentials, endpoint and each bucket of the ``s3://`` ``paths`` (flag, path)
    with short timeouts: a one-line message, or None when every bucket answers."""
    if not paths:
        return None
    s3 = options.view_as(S3Options)
    flag, path = paths[0]
    if bool(s3.s3_access_key_id) != bool(s3.s3_secret_access_key):
        return (f"{flag} {path}: pass both --s3_access_key_id and --s3_secret_access_key, or "
                "neither (to use the AWS credential chain)")
    if not s3.s3_access_key_id:
        import boto3

        if boto3.session.Session().get_credentials() is None:
            return _no_credentials(flag, path)
    client = _client(s3)
    seen: set[str] = set()
    for flag, path in paths:
        if _bucket(path) in seen:
            continue
        seen.add(_bucket(path))
        problem = _probe_bucket(client, s3, flag, path)
        if problem is not None:
            return problem
    return None


def storage_problem(options: PipelineOptions) -> str | None:
    """The first object-storage mistake in the job's path options, as one line naming the
    fix, or None: a scheme whose Beam extra is missing, then for ``s3://`` missing or refused
    credentials, an unreachable endpoint and missing buckets. Bounded: about 30 s at worst,
    a few seconds in the usual cases.
    """
    paths = list(path_flags(options))
    for flag, path in paths:
        problem = missing_extra(flag, path)
        if problem is not None:
            return problem
    return s3_problem(options, [(flag, path) for flag, path in paths
                                if _scheme(path) == "s3"])
