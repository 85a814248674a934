"""Child processes that must keep running (the card simulator, the per-card gateway
processes): started, watched from a thread, and restarted with capped backoff when one dies
while nobody asked it to stop. `runplatform` uses it; systemd does the same for the units."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

logger = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start_at: float | None = None  # set while waiting to restart
    exits: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


@dataclass(frozen=True)
class ChildExit:
    """What `on_exit` is told: who died, how, and when it comes back."""

    name: str
    pid: int
    returncode: int
    restarts: int  # restarts so far, this one included
    delay: float  # seconds until the restart


class Supervisor:
    """Keeps `Child` processes running until `stop()`.

    A child that exits is restarted after `backoff_min` seconds, doubling on each quick
    death up to `backoff_max`; one that ran for `stable_after` seconds starts again from
    `backoff_min`. `on_exit` (called from the watching thread) reports each death; an
    exception in it is logged and changes nothing."""

    def __init__(self, *, on_exit: Callable[[ChildExit], None] | None = None, poll_interval: float = 0.2,
                 backoff_min: float = 1.0, backoff_max: float = 30.0, stable_after: float = 60.0) -> None:
        self.on_exit = on_exit
        self.poll_interval = poll_interval
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.children: list[Child] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def spawn(self, name: str, argv: list[str]) -> Child:
        """Start one child now (and keep it running once `watch()` has been called)."""
        child = Child(name=name, argv=list(argv))
        self._start(child)
        with self._lock:
            self.children.append(child)
        return child

    def _start(self, child: Child) -> None:
        # Its own session: a Ctrl-C in the terminal reaches only the supervisor, which then
        # stops the children itself (instead of watching them die and restarting them).
        child.proc = subprocess.Popen(child.argv, start_new_session=True)
        child.started_at = time.monotonic()
        child.next_start_at = None

    def watch(self) -> None:
        """Start the watching thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
            self._thread.start()

    def _delay(self, child: Child) -> float:
        ran_for = time.monotonic() - child.started_at
        quick_deaths = 0 if ran_for >= self.stable_after else child.restarts
        return min(self.backoff_max, self.backoff_min * 2 ** min(quick_deaths, 16))

    def _run(self) -> None:
        while not self._stopping.wait(self.poll_interval):
            with self._lock:
                children = list(self.children)
            for child in children:
                if self._stopping.is_set():
                    return
                self._check(child)

    def _check(self, child: Child) -> None:
        now = time.monotonic()
        if child.next_start_at is not None:
            if now >= child.next_start_at:
                logger.warning("restarting %s (restart %d)", child.name, child.restarts)
                try:
                    self._start(child)
                except OSError as exc:
                    logger.error("%s could not be started: %s", child.name, exc)
                    child.next_start_at = now + self._delay(child)
            return
        returncode = child.proc.poll() if child.proc else None
        if returncode is None:
            return
        delay = self._delay(child)
        child.restarts += 1
        child.exits.append(returncode)
        child.next_start_at = now + delay
        logger.error("%s (pid %s) exited with %s; restarting it in %.1f s", child.name, child.proc.pid,
                     exit_text(returncode), delay)
        if self.on_exit is not None:
            try:
                self.on_exit(ChildExit(name=child.name, pid=child.proc.pid, returncode=returncode,
                                       restarts=child.restarts, delay=delay))
            except Exception:
                logger.exception("reporting the exit of %s failed", child.name)

    def stop(self, grace: float) -> None:
        """Stop watching, then stop the children one by one, the last started first (the card
        gateways before the card simulator they talk to, so their planned stop is not seen as
        a lost card): SIGTERM, and SIGKILL for what still runs `grace` seconds from now."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            children = list(self.children)
        deadline = time.monotonic() + grace
        for child in reversed(children):
            if child.proc is None:
                continue
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()


def exit_text(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"status {returncode}"
