"""A misbehaving HTTP proxy for S3 fault tests: forwards every request on loopback to the
real server (Host header and all, so SigV4 signatures still match) until told to fail the
next requests: answer an HTTP error, answer late, or cut the response mid-body.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


@dataclass
class Fault:
    # "status": answer an error; "delay": answer late; "reset" (RST) or "eof" (FIN): cut
    # the body off halfway; "short": a well-formed answer with half the body, its
    # Content-Length (but not its Content-Range) telling the truth about the half.
    kind: str
    remaining: int
    method: str | None = None  # only requests with this method, else all
    status: int = 503
    seconds: float = 0.0


class FaultyProxy:
    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.requests: list[str] = []  # "METHOD path" of every request that reached us
        self.faulted = 0  # how many requests a fault hit
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()  # ends injected delays early
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real server

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self) -> None:
                # The client may give up first (a timeout test): not the proxy's error.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    proxy._forward(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def fail(
        self,
        kind: str,
        times: int,
        *,
        method: str | None = None,
        status: int = 503,
        seconds: float = 0.0,
    ) -> None:
        """Make the next ``times`` matching requests fail this way (``10**9``: always)."""
        with self._lock:
            self._faults.append(Fault(kind, times, method, status, seconds))

    def heal(self) -> None:
        with self._lock:
            self._faults.clear()

    def close(self) -> None:
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()

    def _take_fault(self, method: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.method in (None, method):
                    fault.remaining -= 1
                    self.faulted += 1
                    return fault
        return None

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        method = handler.command
        with self._lock:
            self.requests.append(f"{method} {handler.path}")
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        fault = self._take_fault(method)
        if fault and fault.kind == "status":
            error = b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
            handler.send_response(fault.status)
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", str(len(error)))
            handler.end_headers()
            # No body after a HEAD answer: the client would read it as the start of the next
            # answer on this kept-alive connection (the next call then failed "connection
            # failed" instead of "answered HTTP 503", whenever it reused the connection).
            if method != "HEAD":
                handler.wfile.write(error)
            return
        if fault and fault.kind == "delay" and self._closed.wait(fault.seconds):
            return  # the proxy is closing
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            conn.putrequest(method, handler.path, skip_host=True, skip_accept_encoding=True)
            for name, value in handler.headers.items():
                if name.lower() not in ("connection", "keep-alive"):
                    conn.putheader(name, value)
            conn.endheaders(body or None)
            response = conn.getresponse()
            payload = response.read()
            headers = response.getheaders()
        finally:
            conn.close()
        handler.send_response(response.status, response.reason)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP:
                handler.send_header(name, value)
        # HEAD answers carry the object's length but no body.
        declared = response.getheader("Content-Length") if method == "HEAD" else None
        if fault and fault.kind == "short" and len(payload) > 1:
            payload = payload[: len(payload) // 2]
        handler.send_header("Content-Length", declared or str(len(payload)))
        handler.end_headers()
        if method == "HEAD":
            return
        if fault and fault.kind in ("reset", "eof") and len(payload) > 1:
            handler.wfile.write(payload[: len(payload) // 2])
            handler.wfile.flush()
            _cut(handler.connection, reset=fault.kind == "reset")
            handler.close_connection = True
            return
        handler.wfile.write(payload)


def _cut(sock: socket.socket, *, reset: bool) -> None:
    """End the connection now: an RST (linger 0) or a plain FIN, body unfinished."""
    with contextlib.suppress(OSError):
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


@contextlib.contextmanager
def faulty_proxy(upstream: str) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()
