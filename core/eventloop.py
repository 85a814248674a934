"""Running an event loop: uvloop (libuv, a faster loop) where it is installed, the standard
asyncio loop elsewhere (uvloop has no Windows build: requirements.txt installs it only on
other systems)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Coroutine


def event_loop_run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """`asyncio.run(coroutine)`, on uvloop when it can be imported."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def thread_switch_interval_set(milliseconds: float) -> None:
    """How long a thread may keep the GIL while another thread waits for it (Python's default
    is 5 ms). A serving process runs its event loop beside database threads; when the loop is
    busy, a database job that has finished waits for the loop's thread to let go of the GIL,
    up to the whole interval, before its request can go on (measured, 0 ms card, 16 clients:
    ~10 % more requests/s at 1 ms than at 5 ms, CPU per request the same within the noise).
    0 or less: the interval is left as it is (Python's default, unless set before)."""
    if milliseconds > 0:
        sys.setswitchinterval(milliseconds / 1000)
