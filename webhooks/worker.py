"""The webhook delivery worker: sends the outbox (`WebhookDelivery` rows) with retries.

Where it runs: inside the web process (`signplatform/lifespan.py`, every process except
`runplatform --web-only` ones), or on its own with `manage.py webhook_worker`. Several workers
may run against one PostgreSQL database: a delivery is claimed with SELECT ... FOR UPDATE SKIP
LOCKED and leased for longer than one attempt, so no two workers send it at the same time.
With SQLite run one (the embedded default is one web process).

What a receiver gets (one POST per attempt; a retry is a new request with a new timestamp,
nonce and signature, and the same body and X-Delivery-Id):

    POST <the webhook's URL>
    Content-Type: application/json
    User-Agent: signplatform-webhooks/1
    X-Webhook-Event: card.disconnected          (card.error, card.probe_failed, api.request, webhook.test)
    X-Delivery-Id: <UUID, also the body's "id": use it to drop duplicates>
    X-Delivery-Attempt: <1, 2, ...>
    X-Access-Id: <the webhook ID, "WH...">
    X-Timestamp: <Unix time in milliseconds>
    X-Nonce: <32 hex digits>
    X-Signature: <lowercase hex HMAC-SHA256 of the string to sign, keyed with the webhook's secret (UTF-8)>

    {"id": "...", "event": "card.disconnected", "occurred_at": "2025-01-01T08:00:00.123456+00:00",
     "device": "default", "outcome": "CARD_DISCONNECTED", "message": "...", "audit_event_id": 42}
    (api.request adds request_id, access_id, endpoint, http_status, duration_ms, cert_no, data_sha256)

The string to sign is the platform's own API scheme (docs/signing-api.md §1), with the
receiver URL's path and query, so a receiver verifies a notification exactly like the platform
verifies an API call (`signclient.string_to_sign` builds it): eight lines joined by "\\n", no
trailing newline:

    HMAC-SHA256
    POST
    <the URL's path, percent-decoded, e.g. /hooks/signing>
    <canonical query string of the URL: pairs RFC 3986-encoded, sorted; empty line if none>
    <X-Access-Id>
    <X-Timestamp>
    <X-Nonce>
    <lowercase hex SHA-256 of the raw body bytes>

Webhooks in the cp-md5 format (chosen per webhook in the admin, for receivers written for the
Go chinaport-proxy) send the proxy's `ukey_malfunction` / `api_audit` bodies instead
(`cp_md5.py`), with the same Content-Type, User-Agent and X-Webhook-Event / X-Delivery-Id /
X-Delivery-Attempt headers, but signed the proxy's way: no X-Access-Id or X-Nonce, and

    X-Timestamp: <Unix time in milliseconds>
    X-Signature: <lowercase hex MD5("POST" + percent-decoded URL path + X-Timestamp + body + secret)>

A receiver should check the signature (constant-time), that X-Timestamp is within 5 minutes of
its clock, and that it has not seen the nonce in the last 10 minutes; then answer 2xx quickly.
Anything else (3xx included: redirects are not followed, a timeout, a refused connection) is a
failed attempt, retried after WEBHOOK_RETRY_BASE_SECONDS · 2^(attempt−1) (±15 % jitter, at most
WEBHOOK_RETRY_MAX_SECONDS), until WEBHOOK_MAX_ATTEMPTS attempts have failed: then the delivery
is "failed" and shown as such in the admin, where it can be retried."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from django.conf import settings
from django.db import connections
from django.utils import timezone

from accessids.acs import acs_envelope
from core.acs_crypto import AcsCryptoError
from core.dbthread import db_sync_to_async
from core.http_client_errors import connect_error_text
from signclient import sign_headers

from . import cp_md5, services
from .models import ACS, CP_MD5
from .services import DeliveryJob, Outcome

logger = logging.getLogger("webhooks")

USER_AGENT = "signplatform-webhooks/1"
ERROR_BODY_LIMIT = 300  # bytes of a receiver's error answer kept in last_error
LOG_EVERY = 10.0  # seconds: failed audit feed attempts are logged at most this often per webhook


def embedded_worker_wanted() -> bool:
    """Whether the web process (ASGI lifespan) runs a delivery worker: not when
    WEBHOOK_WORKER_EMBEDDED is off, which `runplatform --web-only` sets for its process
    (then `manage.py webhook_worker` or the main runplatform delivers)."""
    return settings.WEBHOOK_WORKER_EMBEDDED


def body_bytes(payload: dict) -> bytes:
    """The exact bytes POSTed (and signed): compact, key-sorted UTF-8 JSON."""
    return json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


# Head.Message of an acs notification, by event.
ACS_MESSAGES = {"api.request": "请求审计", "webhook.test": "测试通知"}
ACS_CARD_FAILURE = "签名设备故障"


def acs_body_bytes(job: DeliveryJob) -> bytes:
    """An acs notification: the native body as the envelope's Data, encrypted and signed for the
    party with its current key (or its certificate). Raises AcsCryptoError when the party's
    keys are missing."""
    if job.acs_party is None:
        raise AcsCryptoError("the webhook's access system party has no settings any more")
    text = json.dumps(job.payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    envelope = acs_envelope(job.acs_party, payload_text=text, ok=True,
                            message=ACS_MESSAGES.get(job.event_type, ACS_CARD_FAILURE))
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def request_headers(job: DeliveryJob, body: bytes) -> dict[str, str]:
    """The headers of one attempt, signed over `body` (the exact bytes POSTed) in the scheme of
    the format the delivery was written in."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Webhook-Event": job.event_type,
        "X-Delivery-Id": job.id,
        "X-Delivery-Attempt": str(job.attempts),
    }
    if job.payload_format == CP_MD5:
        headers.update(cp_md5.sign_headers(job.url, body, job.secret or ""))
    elif job.payload_format == ACS:
        pass  # signed inside the body (Head.Sign)
    else:
        headers.update(sign_headers("POST", job.url, body, job.key, job.secret or ""))
    return headers




class WebhookWorker:
    """Claims due deliveries (at most `concurrency` in flight, `per_webhook` per webhook, so a
    slow receiver never holds up the others), sends them concurrently, records each outcome.
    Database work runs on the worker's own thread, never on the event loop."""

    def __init__(self, *, poll_interval: float = 1.0, concurrency: int | None = None,
                 per_webhook: int | None = None) -> None:
        self.poll_interval = poll_interval
        self.concurrency = concurrency or settings.WEBHOOK_CONCURRENCY
        self.per_webhook = per_webhook or settings.WEBHOOK_CONCURRENCY_PER_WEBHOOK
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._client: httpx.AsyncClient | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._in_flight: dict[asyncio.Task, DeliveryJob] = {}
        self._stopping = False
        self._round = 0
        self._db_down = False
        self._feed_log: dict[int, tuple[float, int]] = {}

    # --- life cycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhook-db")
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
            timeout=float(settings.WEBHOOK_TIMEOUT),
        )
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="webhook-worker")
        services._local_workers.add(self)
        logger.info("webhook delivery worker started (%d at a time, %d per webhook)",
                    self.concurrency, self.per_webhook)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop claiming; let attempts in flight finish for up to `grace` seconds, give the
        others back (due at once, for the next worker)."""
        if self._task is None:
            return
        services._local_workers.discard(self)
        self._stopping = True
        self.wake()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=grace)
        unfinished = {task: job for task, job in self._in_flight.items() if not task.done()}
        interrupted = list(unfinished.values())
        if unfinished:
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            try:
                await self._db(services.deliveries_release)(interrupted)
            except Exception:
                logger.exception("could not give back %d interrupted webhook deliveries", len(interrupted))
            logger.warning("%d webhook deliveries interrupted by the shutdown; they will be sent again",
                           len(interrupted))
        await self._client.aclose()
        await self._db(connections.close_all)()
        self._executor.shutdown(wait=True)
        logger.info("webhook delivery worker stopped")

    async def wait(self) -> None:
        """Until the worker stops (or fails)."""
        if self._task is not None:
            await self._task

    def wake(self) -> None:
        """Look for due deliveries now (from any thread)."""
        loop, event = self._loop, self._wake
        if loop is None or event is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # the loop closed meanwhile
            pass

    def _db(self, func):
        return db_sync_to_async(func, executor=self._executor)

    # --- the loop ------------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                delay = await self._round_run()
            except Exception:  # never let the worker die: the outbox waits for it
                logger.exception("webhook worker: unexpected error; continuing")
                delay = self.poll_interval
            if self._stopping:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def _round_run(self) -> float:
        """Claim what is due and start sending it; returns how long to sleep at most."""
        room = self.concurrency - len(self._in_flight)
        if room <= 0:
            return self.poll_interval  # a finished attempt wakes the loop
        in_flight: dict[int, int] = {}
        for job in self._in_flight.values():
            in_flight[job.webhook_id] = in_flight.get(job.webhook_id, 0) + 1
        self._round += 1
        try:
            claim = await self._db(services.deliveries_claim)(
                room=room, in_flight=in_flight, per_webhook=self.per_webhook, offset=self._round)
        except Exception as exc:
            if not self._db_down:  # once per outage, not every second
                logger.error("webhook worker: could not read the deliveries (%s: %s); retrying",
                             exc.__class__.__name__, exc)
            self._db_down = True
            return self.poll_interval
        if self._db_down:
            logger.info("webhook worker: the database answers again")
            self._db_down = False
        for job in claim.jobs:
            task = asyncio.create_task(self._deliver(job), name=f"webhook-delivery-{job.id}")
            self._in_flight[task] = job
            task.add_done_callback(self._done)
        if claim.next_due is None:
            return self.poll_interval
        until = (claim.next_due - timezone.now()).total_seconds()
        return max(0.0, min(self.poll_interval, until))

    def _done(self, task: asyncio.Task) -> None:
        self._in_flight.pop(task, None)
        if not self._stopping:
            self._wake.set()  # a slot is free

    async def _deliver(self, job: DeliveryJob) -> None:
        outcome = await self._post(job)
        try:
            result = await self._db(services.delivery_finish)(job, outcome)
        except Exception as exc:
            logger.error("webhook %s: could not record delivery %s (%s: %s); it will be sent again",
                         job.webhook_name, job.id, exc.__class__.__name__, exc)
            return
        if result == "delivered":
            # The audit feed is one notification per API request: not one log line each.
            logger.log(logging.DEBUG if job.event_type == "api.request" else logging.INFO,
                       "webhook %s: delivered %s %s (attempt %d, HTTP %s)",
                       job.webhook_name, job.event_type, job.id, job.attempts, outcome.http_status)
            return
        if not result:
            return
        suppressed = self._quiet(job)
        if suppressed is None:
            return
        more = f" (and {suppressed} more audit feed failures since the last message)" if suppressed else ""
        if result == "retrying":
            logger.warning("webhook %s: attempt %d of %s %s failed: %s; will retry%s",
                           job.webhook_name, job.attempts, job.event_type, job.id, outcome.error, more)
        else:
            logger.error("webhook %s: giving up on %s %s after %d attempts: %s%s",
                         job.webhook_name, job.event_type, job.id, job.attempts, outcome.error, more)

    def _quiet(self, job: DeliveryJob) -> int | None:
        """Card failures: every failed attempt is logged. The audit feed (one notification per
        API request): at most one line per webhook every LOG_EVERY seconds; returns how many
        were left out before this one, or None to leave this one out."""
        if job.event_type != "api.request":
            return 0
        now = time.monotonic()
        last, suppressed = self._feed_log.get(job.webhook_id, (0.0, 0))
        if now - last < LOG_EVERY:
            self._feed_log[job.webhook_id] = (last, suppressed + 1)
            return None
        self._feed_log[job.webhook_id] = (now, 0)
        return suppressed

    async def _post(self, job: DeliveryJob) -> Outcome:
        if job.secret is None:
            return Outcome(False, error=job.secret_error)
        timeout = float(settings.WEBHOOK_TIMEOUT)
        if job.payload_format == ACS:
            try:
                body = await self._db(acs_body_bytes)(job)  # may read the App Secret: a DB thread
            except AcsCryptoError as exc:
                return Outcome(False, error=f"cannot encrypt for the access system party: {exc}")
        else:
            body = body_bytes(job.payload)
        headers = request_headers(job, body)
        try:
            # asyncio.timeout bounds the whole exchange; httpx's own timeout is per network step.
            async with asyncio.timeout(timeout):
                async with self._client.stream("POST", job.url, content=body, headers=headers) as response:
                    status = response.status_code
                    if 200 <= status < 300:
                        return Outcome(True, status)
                    text = b""
                    async for chunk in response.aiter_bytes():
                        text += chunk
                        if len(text) >= ERROR_BODY_LIMIT:
                            break
        except (TimeoutError, httpx.TimeoutException):
            return Outcome(False, error=f"no answer within {timeout:g} s")
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            return Outcome(False, error=f"the URL is not a usable http(s) URL: {exc}")
        except httpx.ConnectError as exc:
            return Outcome(False, error=connect_error_text(exc, job.url))
        except (httpx.HTTPError, OSError) as exc:
            return Outcome(False, error=f"the request failed: {exc.__class__.__name__}: {exc}")
        reason = response.reason_phrase or ""
        snippet = " ".join(text[:ERROR_BODY_LIMIT].decode("utf-8", "replace").split())
        error = f"HTTP {status} {reason}".rstrip()
        if 300 <= status < 400:
            error += f" (redirect to {response.headers.get('location', '?')} not followed)"
        if snippet:
            error += f": {snippet}"
        return Outcome(False, status, error)
