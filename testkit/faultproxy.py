"""An HTTP proxy for an S3-protocol server that injects faults and latency (tests and benchmark only).

Clients point ``AWS_ENDPOINT_URL`` at the proxy; it forwards each request to the real
server, except that, with probability ``fault_rate``, it instead

* answers ``503 SlowDown`` (S3's throttling reply),
* answers ``500 InternalError``,
* resets the connection before forwarding, or
* forwards the request and then resets the connection, so the client never learns that
  its PUT succeeded (the case that makes retries dangerous without conditional writes),
* or, only when asked for (``faults=("expired",)``), answers ``400 ExpiredToken``, which
  boto3 does not retry.

Every other request is delayed by ``latency_s`` plus a random ``0..jitter_s``.  Decisions
come from a seeded RNG.  :meth:`FaultProxy.burst` turns faults on for a few seconds (a throttling
storm, a flaky network), whatever ``fault_rate`` is.  It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import http.server
import random
import re
import socket
import struct
import threading
import time
import urllib.parse
from collections import Counter
from typing import Optional

FAULTS = ("503", "500", "reset", "reset_after")
# Not among the default faults: a 400 that boto3 does not retry (as an expired session token),
# so the job's own retry policy (Spark's task retry) is what recovers from it.
ALL_FAULTS = FAULTS + ("expired",)
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
_XML = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{msg}</Message>'
        '<RequestId>faultproxy</RequestId></Error>')


class FaultProxy:
    """Start with :meth:`start` (or as a context manager); ``endpoint_url`` is where clients connect."""

    def __init__(self, upstream: str, fault_rate: float = 0.0, latency_s: float = 0.0, jitter_s: float = 0.0,
                 seed: int = 0, faults: tuple[str, ...] = FAULTS, only: Optional[str] = None,
                 max_faults: Optional[int] = None):
        """Configure (not start) a proxy in front of ``upstream`` (``http://host:port``).

        ``only``: a regex on ``"METHOD /path"`` (``"POST / AWSGlue.CreatePartition"`` for a JSON API: its
        ``X-Amz-Target`` follows); only matching requests may get a fault.
        ``max_faults``: stop injecting after this many.
        """
        u = urllib.parse.urlsplit(upstream)
        self.upstream = (u.hostname or "127.0.0.1", u.port or 80)
        self.fault_rate, self.latency_s, self.jitter_s, self.faults = fault_rate, latency_s, jitter_s, faults
        self._rng = random.Random(seed)
        self._only = re.compile(only) if only else None
        self.max_faults = max_faults
        self._lock = threading.Lock()
        self.counts: Counter = Counter()
        self.requests: Counter = Counter()  # "METHOD /path" -> how many times the proxy saw it
        self.lines: list[str] = []  # every "METHOD /path?query" as sent, URL-decoded, in order
        self._server: Optional[http.server.ThreadingHTTPServer] = None
        self.endpoint_url = ""
        # bursts: [until, at least this many faults, hard end, rate, faults, faults so far]
        self._bursts: list[list] = []

    def burst(self, faults: tuple[str, ...], rate: float, seconds: float, at_least: int = 0,
              at_most_s: float = 60.0) -> None:
        """For the next ``seconds``, and on until it has injected ``at_least`` faults (at most ``at_most_s``):
        a fault on ``rate`` of the requests (``only`` still applies), drawn from ``faults``; counted as
        ``burst_<fault>``.  Bursts may overlap; each draws on its own."""
        now = time.monotonic()
        with self._lock:
            self._bursts.append([now + seconds, at_least, now + at_most_s, rate, faults, 0])

    def _burst_fault(self) -> Optional[str]:
        now = time.monotonic()
        self._bursts = [b for b in self._bursts if now < b[0] or (b[5] < b[1] and now < b[2])]
        for b in self._bursts:
            if self._rng.random() < b[3]:
                b[5] += 1
                return self._rng.choice(b[4])
        return None

    def reads_under(self, fragment: str) -> list[str]:
        """The GET/HEAD requests (object reads and LISTs: a LIST's prefix is in its query) naming ``fragment``."""
        return [ln for ln in self.lines if ln.split(" ", 1)[0] in ("GET", "HEAD") and fragment in ln]

    def _decide(self, request: str) -> tuple[Optional[str], float]:
        with self._lock:
            self.counts["requests"] += 1
            self.requests[request.split("?", 1)[0]] += 1
            self.lines.append(urllib.parse.unquote(request))
            eligible = (self._only is None or self._only.search(request)) and (
                self.max_faults is None or sum(self.counts[f] for f in ALL_FAULTS) < self.max_faults)
            fault = self._burst_fault() if eligible and self._bursts else None
            if fault:
                self.counts[f"burst_{fault}"] += 1
                return fault, 0.0
            if eligible and self._rng.random() < self.fault_rate:
                fault = self._rng.choice(self.faults)
                self.counts[fault] += 1
                return fault, 0.0
            return None, self.latency_s + (self._rng.uniform(0, self.jitter_s) if self.jitter_s else 0.0)

    def start(self) -> "FaultProxy":
        """Listen on 127.0.0.1 and a free port."""
        handler = type("Handler", (_Handler,), {"proxy": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(http.server.BaseHTTPRequestHandler):
    """One request: forwarded to the upstream server, or answered with the fault the proxy decides."""

    proxy: "FaultProxy"  # set per proxy by FaultProxy.start
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reset(self) -> None:
        # SO_LINGER 0: close sends a TCP RST, the client sees "connection reset by peer"
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _error(self, status: int, code: str, msg: str) -> None:
        body = _XML.format(code=code, msg=msg).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.proxy.upstream, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.getheaders(), data
        finally:
            conn.close()

    def _handle(self) -> None:
        body = self._body()
        target = self.headers.get("X-Amz-Target")  # the operation of a JSON API (Glue's "AWSGlue.CreateTable")
        fault, delay = self.proxy._decide(f"{self.command} {self.path}" + (f" {target}" if target else ""))
        if fault == "503":
            return self._error(503, "SlowDown", "Please reduce your request rate.")
        if fault == "500":
            return self._error(500, "InternalError", "We encountered an internal error. Please try again.")
        if fault == "reset":
            return self._reset()
        if fault == "expired":
            return self._error(400, "ExpiredToken", "The provided token has expired.")
        if delay:
            time.sleep(delay)
        status, headers, data = self._forward(body)
        if fault == "reset_after":
            return self._reset()
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in _HOP and not (k.lower() == "content-length" and self.command != "HEAD"):
                self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # a client that goes away (a killed executor, a reset we sent) is not the proxy's error
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)
