"""Everything that differs between Windows and Linux, in one place (the rest of the agent is
the same everywhere): stopping on a signal, the host name, running the restart command."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import socket
import subprocess
import sys
from typing import Callable

WINDOWS = sys.platform.startswith("win")


def host_name() -> str:
    return socket.gethostname() or "unknown-host"


def stop_signals_install(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
    """Ctrl-C / a service stop ends the agent cleanly. Windows has no add_signal_handler:
    signal.signal then (SIGINT, and SIGBREAK which a console close sends)."""
    if not WINDOWS:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        return
    for name in ("SIGINT", "SIGBREAK", "SIGTERM"):  # pragma: no cover - Windows only
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), lambda signum, frame: loop.call_soon_threadsafe(stop))


def restart_command_run(command: str, timeout: float) -> tuple[int | None, str]:
    """Run the configured restart command (e.g. restart the E-Port client). Returns (exit
    code or None on a timeout, the first lines of its output). On Windows the command line is
    given to CreateProcess as it is; elsewhere it is split like a POSIX shell would."""
    argv = command if WINDOWS else shlex.split(command)
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                              env=dict(os.environ), check=False)
    except subprocess.TimeoutExpired:
        return None, f"still running after {timeout:.0f} s"
    except OSError as exc:
        return -1, f"could not start: {exc}"
    output = done.stdout.decode("utf-8", "replace").strip().splitlines()
    return done.returncode, " | ".join(output[:3])[:300]
