"""The declaration worker: sends the outbox (`Submission` rows) to the customs exchange
server, and polls the receipt endpoints.

Where it runs: inside the web process (`signplatform/lifespan.py`, every process except
`runplatform --web-only` ones), or on its own with `manage.py declaration_worker`. Several
may run against one PostgreSQL database: a submission is claimed with SELECT ... FOR UPDATE
SKIP LOCKED and leased for longer than one attempt. With SQLite run one.

Sending (docs/declarations.md §4): `POST {server}/cebcmsg` with the JSON envelope; the
text OK means taken. The outcome decides what happens next:
- no connection, a connect timeout, an incomplete upload, HTTP 5xx or 429: not taken,
  retried after DECLARATION_RETRY_BASE_SECONDS · 2^(attempt−1) (±15 %, at most
  DECLARATION_RETRY_MAX_SECONDS), given up after DECLARATION_SUBMIT_MAX_ATTEMPTS;
- any other answer (2xx without OK, 3xx, 4xx): a definite refusal, never retried;
- the request left but no answer came (read timeout, connection dropped): the exchange may
  have it. It is not sent again (that could declare twice): the declaration needs
  attention, and a receipt still settles it. The same for a submission whose worker died
  while sending it (its lease runs out).

Receipts (§5): every DECLARATION_RECEIPT_POLL_SECONDS (and soon after a message is taken)
each receipt endpoint that has declarations waiting is asked for what came since its cursor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from django.conf import settings
from django.db import connections
from django.utils import timezone

from core.cebexchange import (
    SUBMIT_PATH,
    ReceiptFormatError,
    exchange_envelope,
    exchange_reply_ok,
    receipt_query,
    receipt_records,
)
from core.dbthread import db_sync_to_async
from core.http_client_errors import connect_error_text

from . import services
from .services import ReceiptTarget, SubmissionJob, SubmitOutcome

logger = logging.getLogger("declarations")

USER_AGENT = "signplatform-declarations/1"
REPLY_LIMIT = 1000  # characters of the exchange's answer kept
RECOVER_EVERY = 10.0  # seconds between looks for submissions whose worker died


def embedded_worker_wanted() -> bool:
    """Whether the web process runs a declaration worker (not in `runplatform --web-only`)."""
    return settings.DECLARATION_WORKER_EMBEDDED


def submit_url(server_url: str) -> str:
    return server_url.rstrip("/") + SUBMIT_PATH


class DeclarationWorker:
    """Claims due submissions (at most `concurrency` in flight) and sends them concurrently;
    polls receipts. Database work runs on the worker's own thread, never on the event loop."""

    def __init__(self, *, poll_interval: float = 1.0, concurrency: int | None = None) -> None:
        self.poll_interval = poll_interval
        self.concurrency = concurrency or settings.DECLARATION_SUBMIT_CONCURRENCY
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._receipts_due: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._client: httpx.AsyncClient | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._in_flight: dict[asyncio.Task, SubmissionJob] = {}
        self._stopping = False
        self._recovered_at = 0.0
        self._db_down = False

    # --- life cycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._receipts_due = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="declarations-db")
        timeout = float(settings.CUSTOMS_CEB_TIMEOUT)
        self._client = httpx.AsyncClient(
            follow_redirects=False, headers={"User-Agent": USER_AGENT},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0), pool=min(timeout, 10.0)),
            # A fresh connection per request: a stale kept-alive one would fail after the body
            # was written, and the outcome of that attempt would be unknown.
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        self._stopping = False
        self._tasks = [asyncio.create_task(self._submit_loop(), name="declarations-submit"),
                       asyncio.create_task(self._receipt_loop(), name="declarations-receipts")]
        services._local_workers.add(self)
        logger.info("declaration worker started (%d submissions at a time, receipts every %g s)",
                    self.concurrency, float(settings.DECLARATION_RECEIPT_POLL_SECONDS))

    async def stop(self, grace: float = 5.0) -> None:
        """Stop claiming; let submissions in flight finish for up to `grace` seconds. Those
        whose request had not left yet are given back; the others are outcome unknown."""
        if not self._tasks:
            return
        services._local_workers.discard(self)
        self._stopping = True
        self.wake()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=grace)
        unfinished = {task: job for task, job in self._in_flight.items() if not task.done()}
        if unfinished:
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            not_left = [job for job in unfinished.values() if not job.started]
            left = [job for job in unfinished.values() if job.started]
            try:
                await self._db(services.submissions_release)(not_left)
                for job in left:
                    await self._db(services.submission_finish)(
                        job, SubmitOutcome(SubmitOutcome.UNCONFIRMED, error="the platform stopped before the answer came"))
            except Exception:
                logger.exception("could not record %d interrupted submissions", len(unfinished))
            logger.warning("%d submissions interrupted by the shutdown (%d given back, %d outcome unknown)",
                           len(unfinished), len(not_left), len(left))
        await self._client.aclose()
        await self._db(connections.close_all)()
        self._executor.shutdown(wait=True)
        logger.info("declaration worker stopped")

    async def wait(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks)

    def wake(self) -> None:
        """Look for due submissions now (from any thread)."""
        loop, event = self._loop, self._wake
        if loop is None or event is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(event.set)

    def _db(self, func):
        return db_sync_to_async(func, executor=self._executor)

    # --- submissions ----------------------------------------------------------------------------
    async def _submit_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                delay = await self._submit_round()
            except Exception:  # never let the worker die: the outbox waits for it
                logger.exception("declaration worker: unexpected error; continuing")
                delay = self.poll_interval
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def _submit_round(self) -> float:
        try:
            if time.monotonic() - self._recovered_at > RECOVER_EVERY:
                self._recovered_at = time.monotonic()
                if recovered := await self._db(services.submissions_recover)():
                    logger.warning("%d submissions were left being sent by a stopped worker: outcome unknown",
                                   recovered)
            jobs = await self._db(services.submissions_claim)(room=self.concurrency - len(self._in_flight))
            due = await self._db(services.submission_next_due)()
        except Exception as exc:
            if not self._db_down:
                logger.error("declaration worker: could not read the outbox (%s: %s); retrying",
                             exc.__class__.__name__, exc)
            self._db_down = True
            return self.poll_interval
        self._db_down = False
        for job in jobs:
            task = asyncio.create_task(self._deliver(job), name=f"declaration-submission-{job.id}")
            self._in_flight[task] = job
            task.add_done_callback(self._done)
        if due is None:
            return self.poll_interval
        return max(0.0, min(self.poll_interval, (due - timezone.now()).total_seconds()))

    def _done(self, task: asyncio.Task) -> None:
        self._in_flight.pop(task, None)
        if not self._stopping:
            self._wake.set()

    async def _deliver(self, job: SubmissionJob) -> None:
        outcome = await self._post(job)
        try:
            status = await self._db(services.submission_finish)(job, outcome)
        except Exception as exc:
            logger.error("declaration %s: could not record submission %s (%s: %s)", job.declaration_id, job.id,
                         exc.__class__.__name__, exc)
            return
        if status == "sent":
            logger.info("declaration %s (%s): taken by %s, attempt %d", job.declaration_id, job.message_type,
                        job.server_url, job.attempts)
            self._receipts_due.set()
        elif status == "pending":
            logger.warning("declaration %s: attempt %d failed: %s; will retry", job.declaration_id, job.attempts,
                           outcome.error or outcome.reply)
        elif status:
            logger.error("declaration %s: %s after attempt %d: %s", job.declaration_id, status, job.attempts,
                         outcome.error or outcome.reply)

    async def _post(self, job: SubmissionJob) -> SubmitOutcome:
        url = submit_url(job.server_url)
        body = exchange_envelope(signed_xml=job.xml, message_type=job.message_type, sent_at=timezone.now())
        headers = {"Content-Type": "application/json; charset=utf-8"}
        try:
            job.started = True
            response = await self._client.post(url, content=body, headers=headers)
            text = response.text[:REPLY_LIMIT]
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            job.started = False  # nothing left: the exchange cannot have it
            error = connect_error_text(exc, url) if isinstance(exc, httpx.ConnectError) else \
                f"no connection to {url} within the timeout"
            return SubmitOutcome(SubmitOutcome.RETRY, error=error)
        except (httpx.WriteError, httpx.WriteTimeout) as exc:
            # The body did not arrive whole, so the exchange could not have taken it.
            return SubmitOutcome(SubmitOutcome.RETRY, error=f"the upload was cut off: {exc.__class__.__name__}: {exc}")
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            return SubmitOutcome(SubmitOutcome.FAILED, error=f"the exchange server URL is not usable: {exc}")
        except (httpx.TimeoutException, httpx.HTTPError, OSError) as exc:
            return SubmitOutcome(SubmitOutcome.UNCONFIRMED,
                                 error=f"no answer after sending ({exc.__class__.__name__}: {exc or 'timeout'})")
        status = response.status_code
        if 200 <= status < 300 and exchange_reply_ok(text):
            return SubmitOutcome(SubmitOutcome.SENT, http_status=status, reply=text.strip())
        if status >= 500 or status == 429:
            return SubmitOutcome(SubmitOutcome.RETRY, http_status=status, reply=text.strip(),
                                 error=f"HTTP {status} {response.reason_phrase}".rstrip())
        error = f"HTTP {status}: {' '.join(text.split())[:300]}"
        if 300 <= status < 400:
            error += f" (redirect to {response.headers.get('location', '?')} not followed: check the server URL)"
        return SubmitOutcome(SubmitOutcome.REFUSED, http_status=status, reply=text.strip(), error=error)

    # --- receipts ---------------------------------------------------------------------------------
    async def _receipt_loop(self) -> None:
        while not self._stopping:
            self._receipts_due.clear()
            try:
                await self.receipts_poll()
            except Exception:
                logger.exception("declaration worker: receipt poll failed; continuing")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._receipts_due.wait(),
                                       timeout=float(settings.DECLARATION_RECEIPT_POLL_SECONDS))
            if self._receipts_due.is_set():  # a message was just taken: customs takes a moment
                await asyncio.sleep(min(2.0, float(settings.DECLARATION_RECEIPT_POLL_SECONDS)))

    async def receipts_poll(self) -> int:
        """Ask every receipt endpoint that has declarations waiting; returns new receipts."""
        targets = await self._db(services.receipt_targets)()
        stored = 0
        for target in targets:
            stored += await self._poll_one(target)
        return stored

    async def _poll_one(self, target: ReceiptTarget) -> int:
        path, params = receipt_query(message_type=target.message_type, dxp_id=target.dxp_id,
                                     since=target.query_from)
        url = target.server_url.rstrip("/") + path
        polled_at = timezone.now()
        try:
            response = await self._client.get(url, params=params)
            if response.status_code != 200:
                raise ReceiptFormatError(f"HTTP {response.status_code}: {' '.join(response.text.split())[:200]}")
            records = receipt_records(response.text)
        except (httpx.HTTPError, OSError, ReceiptFormatError) as exc:
            error = connect_error_text(exc, url) if isinstance(exc, httpx.ConnectError) else \
                f"{exc.__class__.__name__}: {exc}"
            logger.warning("receipts of %s at %s: %s", target.dxp_id, url, error)
            await self._db(services.receipt_poll_failed)(target=target, error=error, polled_at=polled_at)
            return 0
        stored = await self._db(services.receipts_record)(target=target, records=records, polled_at=polled_at)
        for receipt in stored:
            logger.info("receipt %s %s for declaration %s: %s", receipt.receipt_type, receipt.return_status,
                        receipt.declaration_id or "(none)", receipt.return_info[:120])
        return len(stored)
