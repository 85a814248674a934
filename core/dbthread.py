"""`db_sync_to_async`: run blocking database work of async views on a small, long-lived
thread pool.

Django's ASGI handler gives every request its own thread for `sync_to_async`, and
database connections belong to a thread, so each request would open (and leave for the
garbage collector) a new connection. These threads live as long as the process and keep
their connections (CONN_MAX_AGE applies; stale or broken ones are replaced before each
job). SQLite gets one thread: its writers serialise anyway, and one connection avoids
lock contention between them."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from django.conf import settings
from django.db import close_old_connections

_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        sqlite = settings.DATABASES["default"]["ENGINE"].endswith("sqlite3")
        _executor = ThreadPoolExecutor(max_workers=1 if sqlite else settings.API_DB_THREADS,
                                       thread_name_prefix="api-db")
    return _executor


def _job(func, args, kwargs):
    close_old_connections()
    return func(*args, **kwargs)


def db_sync_to_async(func, *, executor: ThreadPoolExecutor | None = None):
    """Like `sync_to_async(func)`, on the API's database threads, or on `executor` (a
    worker's own database thread); context variables such as the request id are carried
    over, and a stale or broken connection is replaced before each job. A plain
    `run_in_executor`: asgiref's adapter costs several times as much per call, for
    thread-sensitivity these threads do not need."""

    @functools.wraps(func)
    async def run(*args, **kwargs):
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(executor or _pool(), context.run, _job, func,
                                                                args, kwargs)

    return run


class DbBatch:
    """Group commit: items submitted by concurrent requests are handed to `flush(items)` on
    the database threads together, one batch at a time; while a batch is written, the next
    one gathers. Each `submit` returns once its batch has been written (`flush` returns one
    result per item: a value, or an exception that `submit` raises for that item).

    One batch runs at a time per event loop, so `flush` may take a lock that all of its
    items need (the audit chain's) once per batch instead of once per item."""

    def __init__(self, flush: Callable[[list[Any]], list[Any]], *, name: str) -> None:
        self.flush = flush
        self.name = name
        self._loops: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> _BatchState

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _BatchState()
        future = loop.create_future()
        state.pending.append((item, future))
        if not state.running:
            state.running = True
            loop.create_task(self._drain(loop, state), name=f"{self.name}-batches")
        return await future

    async def _drain(self, loop: asyncio.AbstractEventLoop, state: _BatchState) -> None:
        try:
            while state.pending:
                batch, state.pending = state.pending, []
                items = [item for item, _ in batch]
                try:
                    results = await loop.run_in_executor(_pool(), _job, self.flush, (items,), {})
                except BaseException as exc:  # flush itself failed: every item of the batch did
                    results = [exc] * len(batch)
                if len(results) != len(batch):
                    results = [RuntimeError(f"{self.name}: flush returned {len(results)} results for "
                                            f"{len(batch)} items")] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            state.running = False
            for _, future in state.pending:  # cancelled half-way (the loop is closing)
                if not future.done():
                    future.cancel()
            state.pending = []


class _BatchState:
    __slots__ = ("pending", "running")

    def __init__(self) -> None:
        self.pending: list[tuple[Any, asyncio.Future]] = []
        self.running = False
