"""Tests that start a local server: a free port, a bounded wait, a clean stop."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Self

__all__ = ["FlakyProxy", "free_port", "moto_s3", "silent_listener", "start_server",
           "stop_server", "venv_env"]


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def venv_env(**extra: str) -> dict[str, str]:
    """The environment with this interpreter's bin folder first on PATH (Beam's worker pool
    starts workers with plain ``python``)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra)
    return env


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start_server(command: Sequence[str], port: int, log_path: Path, *, timeout: float = 30.0,
                 env: dict[str, str] | None = None) -> subprocess.Popen:
    """Starts ``command`` in its own process group and waits (at most ``timeout`` s) until it
    listens on ``port``; raises RuntimeError with the log's tail if it dies or never listens."""
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT,
                                   env=env or venv_env(), start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if _listening(port):
            return process
        time.sleep(0.2)
    stop_server(process)
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{command[0]} did not listen on port {port} within {timeout} s:\n{tail}")


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def stop_server(process: subprocess.Popen, *, timeout: float = 10.0) -> None:
    """Stops the server and everything it started (its own process group): TERM, then KILL,
    since children (Beam's SDK workers) may outlive the leader."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process.pid, signal.SIGKILL)
    process.wait(timeout=timeout)


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel's backlog) but never answers:
    an endpoint that hangs. Yields the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


class FlakyProxy:
    """An HTTP proxy on loopback in front of ``upstream`` (``host:port``) that fails the first
    ``failures`` GET/HEAD requests for each object whose key starts with ``prefix``.

    ``mode`` is how it fails: ``"429"`` or ``"503"`` (an S3 ``SlowDown`` error body), or
    ``"reset"`` (the connection is closed with a TCP reset, no response). Everything else is
    passed through unchanged. ``failed`` counts the failures served, by request path.
    Use as a context manager; ``url`` is its endpoint.
    """

    def __init__(self, upstream: str, *, prefix: str, failures: int = 2, mode: str = "429"):
        self.failed: Counter[str] = Counter()
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _should_fail(self) -> bool:
                key = self.path.split("?", 1)[0]
                parts = key.lstrip("/").split("/", 1)  # path-style: bucket, object key
                if (self.command not in ("GET", "HEAD") or len(parts) < 2
                        or not parts[1].startswith(prefix)):
                    return False
                with proxy._lock:
                    proxy._seen[key] += 1
                    if proxy._seen[key] > failures:
                        return False
                    proxy.failed[key] += 1
                return True

            def _fail(self) -> None:
                if mode == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                status = int(mode)
                body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                        b"<Message>Please reduce your request rate.</Message></Error>")
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self._should_fail():
                    self._fail()
                    return
                upstream_conn = http.client.HTTPConnection(upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "transfer-encoding")}
                upstream_conn.request(self.command, self.path, body=body, headers=headers)
                reply = upstream_conn.getresponse()
                data = reply.read()
                self.send_response(reply.status, reply.reason)
                for name, value in reply.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding",
                                            "content-length", "server", "date"):
                        self.send_header(name, value)
                self.send_header("Content-Length",
                                 reply.getheader("Content-Length") if self.command == "HEAD"
                                 else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream_conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def moto_s3(log_dir: Path, **env: str) -> Iterator[str]:
    """A moto S3 server on a free loopback port, with ``env`` added to its environment (for
    example ``INITIAL_NO_AUTH_ACTION_COUNT="0"`` to make it check access keys); yields its URL."""
    port = free_port()
    server = start_server(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        port, log_dir / f"moto_server_{port}.log", timeout=60, env=venv_env(**env))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(server)
