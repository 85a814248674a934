"""`db_sync_to_async`: run blocking database work of async views on a small, long-lived
thread pool.

Django's ASGI handler gives every request its own thread for `sync_to_async`, and
database connections belong to a thread, so each request would open (and leave for the
garbage collector) a new connection. These threads live as long as the process and keep
their connections (CONN_MAX_AGE applies; stale or broken ones are replaced before each
job). SQLite gets one thread: its writers serialise anyway, and one connection avoids
lock contention between them."""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
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


def db_sync_to_async(func, *, executor: ThreadPoolExecutor | None = None):
    """Like `sync_to_async(func)`, on the API's database threads, or on `executor` (a
    worker's own database thread); context variables such as the request id are carried
    over, and a stale or broken connection is replaced before each job."""

    @functools.wraps(func)
    def job(*args, **kwargs):
        close_old_connections()
        return func(*args, **kwargs)

    return sync_to_async(job, thread_sensitive=False, executor=executor or _pool())
