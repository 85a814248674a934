"""A background worker (webhook deliveries, declaration submissions) running on its own event
loop in a thread, as it runs in the web process, for tests that drive it in-process."""

from __future__ import annotations

import asyncio
import threading


class WorkerThread:
    """`WorkerThread(worker).start()`: `worker` has async start() and stop()."""

    def __init__(self, worker) -> None:
        self.worker = worker
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.worker.start())
        self._started.set()
        self.loop.run_forever()

    def start(self) -> WorkerThread:
        self.thread.start()
        assert self._started.wait(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.worker.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
