"""Running an event loop: uvloop (libuv, a faster loop) where it is installed, the standard
asyncio loop elsewhere (uvloop has no Windows build: requirements.txt installs it only on
other systems)."""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine


def event_loop_run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """`asyncio.run(coroutine)`, on uvloop when it can be imported."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)
