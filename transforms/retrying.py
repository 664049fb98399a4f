"""Which read failures are transient, and a bounded retry with backoff for them."""

from __future__ import annotations

import dataclasses
import errno
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

__all__ = ["RetryPolicy", "backoff_delays", "call_with_retries", "is_transient"]

T = TypeVar("T")

# HTTP statuses worth another try: timeouts, throttling and server errors.
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504, 598, 599})
# Socket-level faults, also as seen through network mounts (NFS, gcsfuse).
_TRANSIENT_ERRNO = frozenset({
    errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EPIPE,
    errno.EAGAIN, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTUNREACH, errno.EIO})
# Library exceptions matched by class name, so that no optional client library is imported:
# botocore and urllib3 (S3), requests and google-api-core (GCS), http.client.
_TRANSIENT_NAMES = frozenset({
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
    "ConnectionClosedError", "IncompleteReadError", "ResponseStreamingError",
    "ProtocolError", "NewConnectionError", "RemoteDisconnected", "IncompleteRead",
    "ChunkedEncodingError", "ServiceUnavailable", "TooManyRequests", "InternalServerError",
    "BadGateway", "GatewayTimeout", "DeadlineExceeded"})
# Error codes that S3-compatible stores put in a response body for throttling.
_THROTTLING_WORDS = ("SlowDown", "Throttl", "RequestLimitExceeded", "TooManyRequests")
# Never retried: the file is not there, not readable, or not a file.
_PERMANENT_TYPES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (Beam's S3ClientError ``code``, google-api-core
    ``code``, botocore's ``response``), or None."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    for attribute in ("code", "status_code", "status"):
        value = getattr(exc, attribute, None)
        if isinstance(value, int) and 100 <= value <= 599:
            return value
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and those it was raised from, outermost first (cycles cut)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient(exc: BaseException) -> bool:
    """True for failures that another attempt may not meet: connection resets, timeouts,
    HTTP 408/429/5xx and throttling. False for a missing file, a permission error, a folder,
    any other HTTP 4xx, and anything unrecognised.

    The whole chain of causes is read, since filesystems wrap the client library's exception
    (Beam's S3 client raises ``S3ClientError(str(e), status)`` from botocore's).
    """
    for link in _chain(exc):
        if isinstance(link, _PERMANENT_TYPES):
            return False
        status = _status_of(link)
        if status is not None:
            return status in _TRANSIENT_STATUS
        if isinstance(link, (ConnectionError, TimeoutError)):
            return True
        if isinstance(link, OSError) and link.errno in _TRANSIENT_ERRNO:
            return True
        if type(link).__name__ in _TRANSIENT_NAMES:
            return True
        if any(word in str(link) for word in _THROTTLING_WORDS):
            return True
    return False


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient read failure is retried.

    The defaults make 4 attempts with waits of about 0.5, 1 and 2 s (each +-50% at random,
    so workers that failed together do not retry together): about 3.5 s in all.
    """

    attempts: int = 4
    initial_delay_s: float = 0.5
    factor: float = 2.0
    jitter: float = 0.5


def backoff_delays(policy: RetryPolicy, rng: random.Random | None = None) -> list[float]:
    """The waits before each retry (``attempts - 1`` of them), jittered when ``rng`` is given."""
    delays = [policy.initial_delay_s * policy.factor ** n for n in range(policy.attempts - 1)]
    if rng is None:
        return delays
    return [delay * (1 + policy.jitter * (2 * rng.random() - 1)) for delay in delays]


def call_with_retries(fn: Callable[[], T], policy: RetryPolicy, *,
                      on_retry: Callable[[BaseException], None] = lambda exc: None,
                      sleep: Callable[[float], None] = time.sleep,
                      rng: random.Random | None = None) -> T:
    """Calls ``fn`` until it returns, retrying transient failures (``is_transient``) after
    the policy's waits; a permanent failure, or the last transient one, is raised.

    Args:
        fn: the call to make, without arguments.
        policy: attempts and waits.
        on_retry: called with each failure that is retried (to count it).
        sleep: waits; tests pass a fake.
        rng: source of the jitter (a fresh ``random.Random()`` when None).
    """
    delays: list[float] = []
    for attempt in range(policy.attempts - 1):
        try:
            return fn()
        except Exception as exc:  # pylint: disable=broad-except
            if not is_transient(exc):
                raise
            on_retry(exc)
        # Drawn on the first failure only: seeding a generator costs more than reading a
        # small file, and almost every call succeeds at once.
        delays = delays or backoff_delays(policy, rng or random.Random())
        sleep(delays[attempt])
    return fn()
