"""Loopback ports: finding a free one, and waiting for a child process to listen."""

from __future__ import annotations

import socket
import subprocess
import time

_handed_out: set[int] = set()


def port_free(host: str = "127.0.0.1") -> int:
    """A free port, never one this process was given before (the kernel may offer the same
    ephemeral port twice in a row while nobody listens on it yet)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    return port


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def port_wait_listening(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    """Until `proc` listens on `port`; RuntimeError if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} while starting")
        if port_is_open(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f}s")
