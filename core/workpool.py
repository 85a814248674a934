"""A bounded pool of slots for heavy work (XML parsing, canonicalisation, verification) that
no single caller can fill: at most `size` jobs at once, and at most `share` of them for one
key (an access ID), so one client sending huge or costly documents slows only itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import AsyncIterator


class FairPool:
    def __init__(self, size: int, *, share: int | None = None) -> None:
        self.size = max(1, size)
        self.share = max(1, min(self.size, share if share is not None else (self.size + 1) // 2))
        self._busy = 0
        self._by_key: Counter[str] = Counter()
        self._changed: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _condition(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()
        if self._changed is None or self._loop is not loop:  # asyncio objects belong to one loop
            self._changed, self._loop = asyncio.Condition(), loop
            self._busy, self._by_key = 0, Counter()
        return self._changed

    @contextlib.asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        """Wait for a slot this key may take; hold it for the block."""
        changed = self._condition()
        async with changed:
            await changed.wait_for(lambda: self._busy < self.size and self._by_key[key] < self.share)
            self._busy += 1
            self._by_key[key] += 1
        try:
            yield
        finally:
            async with changed:
                self._busy -= 1
                self._by_key[key] -= 1
                if not self._by_key[key]:
                    del self._by_key[key]
                changed.notify_all()

    @property
    def busy(self) -> int:
        return self._busy
