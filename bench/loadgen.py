"""A threaded HTTP load generator, the same for every server a benchmark compares.

Each client is a thread with its own connection (kept alive when the server allows, opened
again when it answers HTTP/1.0 or `Connection: close`), sending prepared requests (raw
bytes: signed or encrypted before the window, so the generator's own work per request is a
`sendall` and a parse) back to back. Every answer is checked by the caller's `check`."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable


class _Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.opened = 0

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def exchange(self, raw: bytes) -> tuple[int, bytes]:
        """Send one request, read its answer: (status, body)."""
        if self.sock is None:
            self.sock = socket.create_connection((self.host, self.port), timeout=60)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.opened += 1
        self.sock.sendall(raw)
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0][9:12])
        keep = lines[0].startswith(b"HTTP/1.1")
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                keep = b"close" not in value.lower()
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                raise ValueError("chunked answers are not expected here")
        if length is None:  # read to the end
            keep = False
            try:
                while True:
                    self._fill()
            except ConnectionError:
                pass
            length = len(self.buffer)
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        if not keep:
            self.close()
        return status, body


@dataclass
class LoadResult:
    clients: int
    window_s: float
    latencies: list[float]  # seconds, answers completed inside the window
    errors: list[str] = field(default_factory=list)
    connections: int = 0

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.window_s if self.window_s > 0 else 0.0


def threaded_load(*, host: str, port: int | list[int], clients: int, warmup: float, duration: float,
                  request: Callable[[int, int], bytes], check: Callable[[int, bytes], str],
                  on_window: Callable[[str], None] | None = None) -> LoadResult:
    """`clients` threads send `request(client, n)` back to back (client i to the i-th of `port`s,
    round robin, when several are given); `check(status, body)` returns
    "" for a good answer or what is wrong. Counts the answers completed within the window
    [warmup, warmup + duration]; `on_window("begin" | "end")` is called at its edges (CPU and
    card snapshots)."""
    stop = threading.Event()
    lock = threading.Lock()
    done: list[tuple[float, float]] = []
    errors: list[tuple[float, str]] = []
    ports = port if isinstance(port, list) else [port]
    conns = [_Conn(host, ports[i % len(ports)]) for i in range(clients)]

    def client(index: int) -> None:
        conn, n = conns[index], 0
        while not stop.is_set():
            n += 1
            raw = request(index, n)
            started = time.perf_counter()
            try:
                status, body = conn.exchange(raw)
                problem = check(status, body)
            except (OSError, ValueError) as exc:
                conn.close()
                problem = f"{exc.__class__.__name__}: {exc}"
            finished = time.perf_counter()
            with lock:
                if problem:
                    errors.append((finished, problem))
                else:
                    done.append((finished, finished - started))
            if problem and len(errors) > 200:
                return

    threads = [threading.Thread(target=client, args=(i,), daemon=True, name=f"load-{i}") for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(warmup)
    begin = time.perf_counter()
    if on_window:
        on_window("begin")
    time.sleep(duration)
    if on_window:
        on_window("end")
    end = time.perf_counter()
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    for conn in conns:
        conn.close()
    latencies = [lat for at, lat in done if begin <= at <= end]
    # Every error counts, in the window or not: a benchmark run has none.
    return LoadResult(clients, end - begin, latencies, [problem for _, problem in errors], sum(c.opened for c in conns))
