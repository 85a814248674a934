"""A webhook receiver for the tests: a real HTTP server on 127.0.0.1 that records what it
gets, and the check a receiver makes of a notification's signature."""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from signclient import string_to_sign
from tests.services import free_port


@dataclass
class Received:
    at: float
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self):
        return json.loads(self.body)


class QuietServer(ThreadingHTTPServer):
    """A sender that hangs up (its timeout, the platform stopping) is part of what the tests
    do: not a traceback on the test output. Any other error still prints one."""

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class Receiver:
    """An HTTP server on 127.0.0.1 recording every request. It answers the statuses in
    `statuses` one per request, then `default_status`; `delay` seconds before answering."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.requests: list[Received] = []
        self.statuses: list[int] = []
        self.default_status = 200
        self.delay = 0.0
        self.cond = threading.Condition()
        self.server: ThreadingHTTPServer | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received = Received(time.monotonic(), self.command, self.path,
                                    {k.lower(): v for k, v in self.headers.items()}, body)
                with receiver.cond:
                    status, reply = receiver.respond(received)
                    receiver.requests.append(received)
                    receiver.cond.notify_all()
                if receiver.delay:
                    time.sleep(receiver.delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except (BrokenPipeError, ConnectionResetError):  # the sender timed out first
                    pass

            def log_message(self, *args):
                pass

        self.server = QuietServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def respond(self, request: Received) -> tuple[int, bytes]:
        """The status and body to answer `request` with (called holding `cond`)."""
        status = self.statuses.pop(0) if self.statuses else self.default_status
        return status, (b'{"ok":true}' if status < 300 else b"receiver says no: maintenance window")

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def wait(self, count: int, timeout: float = 10.0) -> list[Received]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"the receiver got {len(self.requests)} requests, not {count}, in {timeout}s")
            return list(self.requests)

    def wait_for(self, predicate, timeout: float) -> Received:
        with self.cond:
            found: list[Received] = []
            ok = self.cond.wait_for(lambda: found.extend(r for r in self.requests if predicate(r)) or found, timeout)
            if not ok:
                raise AssertionError(f"no matching request in {timeout}s; got {[r.headers for r in self.requests]}")
            return found[0]


def signature_valid(request: Received, secret: str) -> bool:
    """What a receiver does: rebuild the string to sign from the request it got and compare."""
    parts = urlsplit(request.path)
    h = request.headers
    text = string_to_sign(request.method, unquote(parts.path), parts.query, h["x-access-id"], h["x-timestamp"],
                          h["x-nonce"], request.body)
    expected = hmac.new(secret.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, h["x-signature"])
