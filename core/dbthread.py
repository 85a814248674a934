"""`db_sync_to_async`: run blocking database work of async views on a small, long-lived
thread pool (`DbThreads`).

Django's ASGI handler gives every request its own thread for `sync_to_async`, and
database connections belong to a thread, so each request would open (and leave for the
garbage collector) a new connection. These threads live as long as the process and keep
their connections (CONN_MAX_AGE applies; stale or broken ones are replaced before each
job). SQLite gets one thread: its writers serialise anyway, and one connection avoids
lock contention between them."""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import functools
import queue
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from django.conf import settings
from django.db import close_old_connections


class DbThreads:
    """The API's database threads: one queue of jobs, `size` threads that live as long as the
    process, and each result handed to the awaiting asyncio future with one
    `call_soon_threadsafe`. Every signed request makes two or three such hops, so they are
    kept lean: `run_in_executor` adds a concurrent.futures Future (a Condition and its lock
    per job) and the chaining of two futures' callbacks. At exit, the jobs already queued are
    finished before the threads end, and a job whose awaiter was cancelled before it started
    is not run (both as with ThreadPoolExecutor)."""

    def __init__(self, size: int, *, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{n}", daemon=True) for n in range(size)]
        self._closed = False
        self._closing = threading.Lock()  # no job is queued behind the threads' stop marks
        for thread in self._threads:
            thread.start()
        atexit.register(self.shutdown)

    def run(self, loop: asyncio.AbstractEventLoop, context: contextvars.Context | None, func: Callable,
            *args: Any) -> asyncio.Future:
        """A future of `loop` that gets `func(*args)`'s result (or exception), called on one of
        the threads (inside `context` when given)."""
        future = loop.create_future()
        with self._closing:
            if self._closed:
                raise RuntimeError("the database threads have been shut down")
            self._jobs.put((loop, future, context, func, args))
        return future

    def shutdown(self) -> None:
        """Let the threads finish the queued jobs, then end (called at exit)."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
            for _ in self._threads:
                self._jobs.put(None)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            loop, future, context, func, args = job
            job = None
            if future.cancelled():  # its awaiter was cancelled while it waited: not started (as run_in_executor)
                loop = future = context = func = args = None
                continue
            try:
                result = context.run(func, *args) if context is not None else func(*args)
            except BaseException as exc:  # the awaiting request gets it, as from run_in_executor
                outcome: tuple[Any, BaseException | None] = (None, exc)
            else:
                outcome = (result, None)
            try:
                loop.call_soon_threadsafe(_settle, future, *outcome)
            except RuntimeError:  # the loop has closed: nobody awaits the result
                pass
            loop = future = context = func = args = outcome = result = None


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is None:
        future.set_result(result)
    elif isinstance(exc, StopIteration):  # an asyncio future refuses it as an exception
        future.set_exception(RuntimeError(f"the database job raised StopIteration: {exc!r}"))
    else:
        future.set_exception(exc)


def cache_objects_per_thread() -> None:
    """Django's cache handler keeps the cache objects (one per alias) in an asgiref `Local`
    that follows the context: a job run on a database thread in a copy of the request's
    context (`db_sync_to_async`) never sees the objects of the jobs before it and builds new
    ones, every job (two per signed request; with Redis each builds its client wrapper too).
    Kept per thread instead (a `threading.local`), each thread builds each cache object once.
    Nothing is lost by sharing one object among the tasks of the event loop's thread (as they
    already share the one built before the loop started): a cache object's calls do not
    await, the local-memory cache's entries are per process behind a lock, and Redis clients
    share one connection pool. (A test that overrides CACHES gets Django's Local back; only
    the reuse is lost.)"""
    from django.core.cache import caches

    caches._connections = threading.local()


_threads: DbThreads | None = None
_threads_lock = threading.Lock()


def _pool() -> DbThreads:
    global _threads
    if _threads is None:
        with _threads_lock:
            if _threads is None:
                sqlite = settings.DATABASES["default"]["ENGINE"].endswith("sqlite3")
                _threads = DbThreads(1 if sqlite else settings.API_DB_THREADS, name="api-db")
    return _threads


def _job(func, args, kwargs):
    close_old_connections()
    return func(*args, **kwargs)


def db_sync_to_async(func, *, executor: ThreadPoolExecutor | None = None):
    """Like `sync_to_async(func)`, on the API's database threads, or on `executor` (a
    worker's own database thread); context variables such as the request id are carried
    over, and a stale or broken connection is replaced before each job. A plain hop to
    `DbThreads` (`run_in_executor` on `executor`): asgiref's adapter costs several times as
    much per call, for thread-sensitivity these threads do not need."""

    @functools.wraps(func)
    async def run(*args, **kwargs):
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        if executor is not None:
            return await loop.run_in_executor(executor, context.run, _job, func, args, kwargs)
        return await _pool().run(loop, context, _job, func, args, kwargs)

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
                    results = await _pool().run(loop, None, _job, self.flush, (items,), {})
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
