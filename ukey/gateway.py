"""The UKey gateway: the single owner of each card's WebSocket connection.

Callers never touch the socket. They send `ukey.request` messages to the channel
`ukey.<slug>` on the channel layer (ukey/messages.py, ukey/client.py); the host (the
platform's `signing.gateway_host`) hands them to the device's `CardGateway`, which
executes them from a bounded queue and answers on the caller's reply channel.

Guarantees:
- one operation in flight per card; replies matched by `_id` (a bare `{Result,...}`
  answer belongs to the one in-flight request);
- a request whose card operation times out gets UKEY_TIMEOUT and the connection is
  reset, so a late answer can never reach the next caller;
- a full queue, a disconnected card or a stopping gateway answer at once (UKEY_UNAVAILABLE);
- reconnects with capped exponential backoff and full jitter; a health probe
  (`SpcGetCertNo`) after UKEY_PROBE_INTERVAL seconds without a successful operation;
- status (connected, since, last success, last error, queue depth, certNo, algorithm,
  enterprise name, certificate expiry) handed to the host's `publish_status` hook.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from . import protocol
from .agentproto import EVENT_AGENT_RESTARTED
from .connection import CardConnection, CardConnectionLost
from .messages import UKEY_ERROR, UKEY_TIMEOUT, UKEY_UNAVAILABLE, reply_message
from .status import DeviceStatus

logger = logging.getLogger("ukey.gateway")

HEARTBEAT_INTERVAL = 2.0
_PUBLISH_THROTTLE = 0.5

# What a gateway reports to its host's `record_event` (the platform writes them to the
# audit log under these event types).
CARD_CONNECTED = "card.connected"
CARD_RECONNECTED = "card.reconnected"
CARD_DISCONNECTED = "card.disconnected"
CARD_ERROR = "card.error"  # an operation failed: Result:false, timeout, connection lost mid-call
CARD_PROBE_FAILED = "card.probe_failed"
CARD_AGENT_RESTARTED = EVENT_AGENT_RESTARTED  # a card agent restarted a stalled E-Port client
# A planned stop (Ctrl-C, SIGTERM, a card changed or removed in the admin): information, not a
# failure; the connection it closes is not reported as card.disconnected.
CARD_GATEWAY_STOPPED = "card.gateway_stopped"
EVENT_OK = "OK"


@dataclass(frozen=True)
class CardEvent:
    slug: str
    url: str
    kind: str  # one of the CARD_* names above
    outcome: str  # EVENT_OK, or an error code
    message: str


@dataclass(frozen=True)
class CertificateFacts:
    """What the status shows of the card's signing certificate."""

    algorithm: str
    subject: str
    not_after: str  # ISO 8601
    organization: str = ""  # the subject's O=: the enterprise the card belongs to


async def _no_event(event: CardEvent) -> None:
    return None


@dataclass(frozen=True)
class GatewayHooks:
    """What a gateway's host gives it, so the gateway itself needs no framework:
    - `publish_status(status)`: the card's live status, every few seconds and on change;
    - `record_event(event)`: connects, disconnects, failed operations and probes (awaited in
      a background task; an exception is logged and the card keeps working);
    - `unseal_pin(sealed)`: the clear PIN of a `fallback_pin` a client sent (raises
      ValueError on a value it cannot read);
    - `inspect_certificate(pem)`: facts about the card's certificate (raises ValueError
      on one it cannot read); without it the status shows none."""

    publish_status: Callable[[DeviceStatus], None] = lambda status: None
    record_event: Callable[[CardEvent], Awaitable[None]] = _no_event
    unseal_pin: Callable[[str], str] | None = None
    inspect_certificate: Callable[[str], CertificateFacts] | None = None


@dataclass(frozen=True)
class DeviceConfig:
    slug: str
    url: str
    pin: str
    connect_timeout: float
    request_timeout: float
    queue_size: int
    probe_interval: float
    reconnect_min: float
    reconnect_max: float
    max_frame_bytes: int
    pipeline_depth: int = 1
    call_timeout: float = 30.0  # a request that names no deadline gets this long
    # After the connection drops, requests wait this long (within their deadline) for the
    # reconnect instead of failing at once; after it they fail fast until the card is back.
    reconnect_wait: float = 3.0

    def __repr__(self) -> str:  # never show the PIN
        return f"DeviceConfig(slug={self.slug!r}, url={self.url!r})"


_CONNECTED = object()


@dataclass
class _Job:
    message: dict[str, Any]
    default_timeout: float
    reply_future: asyncio.Future | None = None  # a caller in this process (no channel layer)

    @property
    def deadline(self) -> float:
        return float(self.message.get("deadline") or (time.time() + self.default_timeout))


class _Slots:
    """The pipeline's slots (requests at the control at once). A slot is held by the future
    of the request using it and freed when that request is answered (`done`), failed or
    never sent (`release`); a freed slot goes to the oldest waiter, or is first offered to
    `handoff`, which may send the waiter's job itself at once (`acquire` then returns True)."""

    def __init__(self, size: int) -> None:
        self.free = size
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.holders: set[asyncio.Future] = set()

    def take_free(self) -> bool:
        """Take a slot that is free now with nobody waiting before this caller; False: none."""
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return True
        return False

    async def acquire(self) -> bool:
        """Wait for a slot. True: the waiter's job was sent by `handoff` (its slot with it)."""
        if self.take_free():
            return False
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result() is False:
                self.release()  # given a slot, then cancelled before using it
            raise
        finally:
            with contextlib.suppress(ValueError):
                self.waiters.remove(waiter)

    def hold(self, future: asyncio.Future) -> None:
        self.holders.add(future)

    def done(self, future: asyncio.Future, *, handoff: Callable[[], bool] | None = None) -> None:
        """The request of `future` is over: free its slot (once)."""
        if future in self.holders:
            self.holders.discard(future)
            self.release(handoff=handoff)

    def release(self, *, handoff: Callable[[], bool] | None = None) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(bool(handoff and handoff()))
                return
        self.free += 1


class CardGateway:
    """Owns one card: its connection, its queue, its status."""

    def __init__(self, config: DeviceConfig, channel_layer, hooks: GatewayHooks | None = None, *,
                 connect: Callable[[], Awaitable[Any]] | None = None) -> None:
        """`connect`: opens the card connection (default: a WebSocket to `config.url`); for a
        card behind an agent, the agent session's. It raises OSError, ConnectionError or
        asyncio.TimeoutError when the card cannot be reached (the gateway backs off)."""
        self.config = config
        self.layer = channel_layer
        self.hooks = hooks or GatewayHooks()
        self._connect = connect or self._connect_url
        self._last_publish = 0.0
        self._queue: asyncio.Queue = asyncio.Queue()  # bounded by `config.queue_size` in submit()
        self._depth = 0
        self._conn: CardConnection | None = None
        self._stopping = False
        self._outstanding = 0
        self._slots = _Slots(max(1, config.pipeline_depth))
        self._answer_tasks: set[asyncio.Task] = set()
        self._holding: _Job | None = None  # taken from the queue, waiting for a pipeline slot
        self._executor_idle = False  # the executor waits for the next queued item (`_dispatch_now`)
        self._reset_requested = asyncio.Event()
        self._connected = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._last_activity = time.monotonic()
        self.status = DeviceStatus(slug=config.slug, url=config.url)
        self._event_tasks: set[asyncio.Task] = set()
        self._reported_down = False  # a card.disconnected event was written and no connect since

    # --- lifecycle -------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def tasks(self) -> list[asyncio.Task]:
        """The gateway's long-running tasks (supervisor, executor, heartbeat): none ends
        before `shutdown()` unless something is badly wrong."""
        return list(self._tasks)

    def start(self) -> None:
        slug = self.config.slug
        self._tasks = [
            asyncio.create_task(self._supervise(), name=f"ukey-supervisor-{slug}"),
            asyncio.create_task(self._execute_loop(), name=f"ukey-executor-{slug}"),
            asyncio.create_task(self._heartbeat(), name=f"ukey-heartbeat-{slug}"),
        ]
        self._publish()

    async def shutdown(self, grace: float, reason: str = "planned shutdown") -> None:
        """Stop taking requests, let queued and in-flight operations finish within
        `grace` seconds, then close the card connection cleanly. A planned stop: it writes a
        `card.gateway_stopped` event (information, with `reason`), and a connection that ends
        meanwhile is not reported as a disconnected card."""
        if self._stopping:
            return
        self._stopping = True
        logger.info("card %s: gateway stopping (%d queued, %d in flight)", self.config.slug, self._depth, self._outstanding)
        deadline = time.monotonic() + grace
        while (self._depth > 0 or self._outstanding > 0) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self._event_tasks:  # card events still being written
            await asyncio.wait(set(self._event_tasks), timeout=max(0.5, deadline - time.monotonic()))
        tasks = [*self._tasks, *self._answer_tasks]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        left = [self._holding] if self._holding else []
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        for item in left:
            if isinstance(item, _Job):
                await self._reply_error(item, UKEY_UNAVAILABLE, "the gateway is shutting down")
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        self.status.connected = False
        self.status.gateway_running = False
        self.status.last_error = "gateway stopped"
        self.status.last_error_at = time.time()
        self._publish()
        await self._card_event_write(CARD_GATEWAY_STOPPED, EVENT_OK, f"gateway stopped: {reason}"[:500])
        logger.info("card %s: gateway stopped (%s)", self.config.slug, reason)

    # --- requests ------------------------------------------------------------------
    async def submit(self, message: dict[str, Any], *, reply_future: asyncio.Future | None = None) -> None:
        """Take one request from the channel layer (or, with `reply_future`, from a caller in
        this process, who gets the reply message there); never blocks on the card."""
        job = _Job(message, self.config.call_timeout, reply_future)
        if self._stopping:
            await self._reply_error(job, UKEY_UNAVAILABLE, "the gateway is shutting down")
        elif self._conn is None and not self._reset_requested.is_set() and not self._reconnect_window():
            await self._reply_error(job, UKEY_UNAVAILABLE, f"card {self.config.slug} is not connected: {self.status.last_error or 'connecting'}")
        elif self._depth - self._free_slots() >= self.config.queue_size:
            await self._reply_error(job, UKEY_UNAVAILABLE, f"card {self.config.slug} queue is full ({self.config.queue_size} waiting)")
        else:
            self._depth += 1
            self.status.queue_depth = self._depth
            if not self._dispatch_now(job):
                self._enqueue(job)

    def _enqueue(self, item) -> None:
        """Queue an item for the executor. From this moment the executor is not idle, although it
        resumes a loop step or two later: nothing may be sent past the item meanwhile."""
        self._executor_idle = False
        self._queue.put_nowait(item)

    def _dispatch_now(self, job: _Job) -> bool:
        """Send a job in the submitter's own step when the executor is idle (waiting for work:
        nothing queued, no job held for a slot, no probe or card facts under way), a pipeline
        slot is free and the connection is up: what the executor would do next, without the
        few event loop steps of waking it. False: the job is queued as usual."""
        conn = self._conn
        if (not self._executor_idle or not self._queue.empty() or self._holding is not None or conn is None
                or self._reset_requested.is_set() or not hasattr(conn, "send_nowait")
                or not self._slots.take_free()):
            return False
        self._take(job)
        self._start_or_fail(job, conn)
        return True

    def reset(self, reason: str) -> None:
        """A caller found an answer of this card wrong (a signature that does not verify over
        its data): record a card error and drop the connection; it reconnects at once, and
        requests on the dropped connection get UKEY_UNAVAILABLE."""
        message = f"connection reset: {reason}"
        self._record_error(message, card=True)
        logger.error("card %s: %s", self.config.slug, message)
        self._card_event(CARD_ERROR, "ANSWER_MISMATCH", message)
        conn = self._conn
        if conn is not None and not self._stopping:
            self._reset_requested.set()
            self._connected.clear()
            conn.abort()
        self._publish()

    def _free_slots(self) -> int:
        """Pipeline slots no job holds: that many queued jobs go to the card at once, so they
        are not waiting (whether or not the executor has taken them off the queue yet)."""
        return max(0, max(1, self.config.pipeline_depth) - self._outstanding)

    async def _next_item(self, timeout: float):
        if not self._queue.empty():
            return self._queue.get_nowait()  # no task or timer when work is waiting
        self._executor_idle = True
        try:
            return await asyncio.wait_for(self._queue.get(), timeout=timeout)
        finally:
            self._executor_idle = False

    async def _execute_loop(self) -> None:
        while True:
            idle_for = time.monotonic() - self._last_activity
            wait = max(0.05, self.config.probe_interval - idle_for)
            try:
                item = await self._next_item(wait)
            except asyncio.TimeoutError:
                if time.monotonic() - self._last_activity < self.config.probe_interval:
                    continue  # requests sent without the executor (`_dispatch_now`) kept the card busy
                if self._conn is not None and not self._stopping and self._outstanding == 0:
                    await self._probe()
                else:
                    self._last_activity = time.monotonic()
                continue
            if item is _CONNECTED:
                await self._load_card_facts()
            elif isinstance(item, _Job):
                await self._dispatch(item)

    async def _dispatch(self, job: _Job) -> None:
        """Send one job to the card once a pipeline slot is free; its answer is awaited
        (and replied to) in a task of its own so the next request can go out meanwhile. When
        the slot is freed by an answer, the job is sent by `_handoff` in that same callback."""
        self._holding = job
        sent = await self._slots.acquire()  # cancelled: shutdown answers the held job
        if self._holding is job:
            self._holding = None
        if sent:
            return
        self._take(job)
        try:
            if self._conn is None or self._reset_requested.is_set():
                await self._wait_reconnect(job.deadline)
        except BaseException:
            self._slots.release()
            self._outstanding -= 1
            raise
        self._start_or_fail(job, self._conn)

    def _take(self, job: _Job) -> None:
        # Waiting for a slot still counts as queued; from here on it is the card's, and counts
        # as in flight until its reply is sent (shutdown waits for that, not just the card).
        self._depth -= 1
        self._outstanding += 1
        self.status.queue_depth = self._depth

    def _handoff(self) -> bool:
        """A slot was freed by an answer: send the job waiting for it at once, in the same
        callback, when nothing needs waiting for (the card idles for one socket round trip,
        not for the event loop's other work). False: the waiter takes the slot itself."""
        job, conn = self._holding, self._conn
        if job is None or conn is None or self._reset_requested.is_set() or self._stopping \
                or not hasattr(conn, "send_nowait"):
            return False
        self._holding = None
        self._take(job)
        self._start_or_fail(job, conn)
        return True

    def _start_or_fail(self, job: _Job, conn: CardConnection | None) -> None:
        """`_start`; anything unexpected on the way (a malformed message) answers its caller with
        an error and frees its slot, wherever the job was sent from: `submit`, the executor, or
        the callback of the answer before it (where an exception would leave the executor
        waiting for a slot that never comes)."""
        try:
            self._start(job, conn)
        except Exception as exc:  # its name only: the message or a traceback could carry the job's args (a PIN)
            logger.error("card %s: a request could not be sent (%s)", self.config.slug, type(exc).__name__)
            self._fail(job, UKEY_ERROR, "the request could not be sent to the card")

    def _start(self, job: _Job, conn: CardConnection | None) -> None:
        """Send a job that holds a pipeline slot (and counts as outstanding) to the card; any
        failure is answered to its caller (in a task) and frees the slot."""
        method = str(job.message.get("method") or "")
        remaining = job.deadline - time.time()
        if remaining <= 0:
            self._fail(job, UKEY_TIMEOUT, "the request waited in the card queue past its deadline")
            return
        if conn is None:
            self._fail(job, UKEY_UNAVAILABLE,
                       f"card {self.config.slug} is not connected: {self.status.last_error or 'connecting'}")
            return
        args = dict(job.message.get("args") or {})
        args.pop("passwd", None)
        if method in protocol.PIN_METHODS and self.config.pin:
            args["passwd"] = self.config.pin
        elif method in protocol.PIN_METHODS and job.message.get("fallback_pin"):
            # Legacy clients that send their own PIN; it crossed the channel layer sealed.
            try:
                if self.hooks.unseal_pin is None:
                    raise ValueError("this gateway cannot unseal a client's PIN")
                args["passwd"] = self.hooks.unseal_pin(job.message["fallback_pin"])
            except ValueError:
                self._fail(job, UKEY_ERROR, "the client's card PIN could not be read (master key mismatch)")
                return
        # A request queued behind others at the control gets their time too.
        timeout = min(self.config.request_timeout * (conn.outstanding + 1), remaining)
        started = time.monotonic()
        send_nowait = getattr(conn, "send_nowait", None)
        if send_nowait is None:  # a connection that can only send asynchronously (an agent's link)
            self._track(self._send_then_answer(job, conn, method, args, timeout, started))
            return
        try:
            future = send_nowait(method, args)
        except CardConnectionLost as exc:
            self._record_error(f"{method}: {exc}")
            self._fail(job, UKEY_UNAVAILABLE, f"card {self.config.slug} connection lost: {exc}")
            return
        self._slots.hold(future)
        self._track(self._answer(job, conn, method, future, timeout, started))

    def _track(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._answer_tasks.add(task)
        task.add_done_callback(self._answer_tasks.discard)

    def _fail(self, job: _Job, code: str, message: str) -> None:
        """A job that holds a slot and will not reach the card: free the slot, answer the error."""
        self._slots.release()

        async def reply() -> None:
            try:
                await self._reply_error(job, code, message)
            finally:
                self._outstanding -= 1

        self._track(reply())

    async def _send_then_answer(self, job: _Job, conn, method: str, args: dict[str, Any], timeout: float,
                                started: float) -> None:
        try:
            future = await conn.send(method, args)
        except CardConnectionLost as exc:
            self._record_error(f"{method}: {exc}")
            self._slots.release()
            try:
                await self._reply_error(job, UKEY_UNAVAILABLE, f"card {self.config.slug} connection lost: {exc}")
            finally:
                self._outstanding -= 1
            return
        except BaseException:
            self._slots.release()
            self._outstanding -= 1
            raise
        self._slots.hold(future)
        await self._answer(job, conn, method, future, timeout, started)

    def _answered(self, future: asyncio.Future) -> None:
        """The connection matched an answer to `future` (called before its result is set):
        its slot is free, and goes straight to the next job."""
        self._slots.done(future, handoff=self._handoff)

    async def _answer(self, job: _Job, conn: CardConnection, method: str, future: asyncio.Future,
                      timeout: float, started: float) -> None:
        try:
            await self._answer_reply(job, conn, method, future, timeout, started)
        finally:
            self._outstanding -= 1  # only once the caller has its reply

    async def _answer_reply(self, job: _Job, conn: CardConnection, method: str, future: asyncio.Future,
                            timeout: float, started: float) -> None:
        try:
            result = await self._await_result(conn, method, future, timeout)
        except asyncio.TimeoutError:
            # Answer once the reset connection is back, so the caller's next request finds
            # the card connected (bounded by the connect timeout).
            self._answered(future)
            await self._wait_connected()
            await self._reply_error(job, UKEY_TIMEOUT, f"card {self.config.slug} did not answer {method} within {timeout:.1f}s")
            return
        except CardConnectionLost as exc:
            self._answered(future)
            await self._reply_error(job, UKEY_UNAVAILABLE, f"card {self.config.slug} connection lost during {method}: {exc}")
            return
        finally:
            self._answered(future)  # no-op when the connection already freed the slot
        await self._reply(
            job,
            {
                "ok": result.ok,
                "code": None if result.ok else UKEY_ERROR,
                "message": "" if result.ok else result.message,
                "result": result.as_args(),
                "duration": time.monotonic() - started,
            },
        )

    async def _await_result(self, conn: CardConnection, method: str, future: asyncio.Future,
                            timeout: float, *, report: bool = True) -> protocol.CardResult:
        """Wait for one answer; on timeout reset the connection (a late answer must never
        reach anyone) and let the next request wait for the reconnect. `report`: a failure
        is a card.error audit event (the gateway's own probes report themselves)."""
        try:
            result = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            if self._conn is conn and not self._reset_requested.is_set():
                self._record_error(f"{method} timed out after {timeout:.1f}s; connection reset")
                self._reset_requested.set()
                self._connected.clear()
                conn.abort()
            if report:
                self._card_event(CARD_ERROR, UKEY_TIMEOUT, f"{method} timed out after {timeout:.1f}s")
            raise
        except CardConnectionLost as exc:
            self._record_error(f"{method}: {exc}")
            if report:
                self._card_event(CARD_ERROR, UKEY_UNAVAILABLE, f"{method}: connection lost: {exc}")
            raise
        self._last_activity = time.monotonic()
        if result.ok:
            self.status.last_ok_at = time.time()
        else:
            self._record_error(f"{method}: {result.message} ({result.error_code or 'no code'})", card=True)
            logger.warning("card %s: %s", self.config.slug, self.status.last_error)
            if report:
                self._card_event(CARD_ERROR, UKEY_ERROR, self.status.last_error)
        self._publish(throttle=True)
        return result

    async def _card_call(self, method: str, args: dict[str, Any], timeout: float) -> protocol.CardResult:
        """One card operation for the gateway itself (probe, card facts)."""
        await self._slots.acquire()  # nothing is held: never handed off
        future = None
        try:
            if self._reset_requested.is_set():
                await self._wait_connected()
            conn = self._conn
            if conn is None:
                raise CardConnectionLost("not connected")
            future = await conn.send(method, args)
            self._slots.hold(future)
            return await self._await_result(conn, method, future, timeout, report=False)
        finally:
            if future is None:
                self._slots.release()
            else:
                self._answered(future)

    def _reconnect_window(self) -> float:
        """Seconds left in which a request may wait for the reconnect (0: fail fast)."""
        if self._conn is not None or self.status.down_since is None:
            return 0.0
        return max(0.0, self.status.down_since + self.config.reconnect_wait - time.time())

    async def _wait_reconnect(self, deadline: float) -> None:
        """Wait for the connection: after a deliberate reset up to the connect timeout, after a
        drop while the reconnect window is open; never past the request's deadline."""
        limit = self.config.connect_timeout + 1 if self._reset_requested.is_set() else self._reconnect_window()
        limit = min(limit, deadline - time.time())
        if limit > 0:
            try:
                await asyncio.wait_for(self._connected.wait(), timeout=limit)
            except asyncio.TimeoutError:
                pass

    async def _wait_connected(self) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout=self.config.connect_timeout + 1)
        except asyncio.TimeoutError:
            pass

    async def _probe(self) -> None:
        self._last_activity = time.monotonic()
        try:
            result = await self._card_call("cus-sec_SpcGetCertNo", {}, self.config.request_timeout)
        except (asyncio.TimeoutError, CardConnectionLost) as exc:
            logger.warning("card %s: health probe failed", self.config.slug)
            self._card_event(CARD_PROBE_FAILED, "PROBE_FAILED",
                             f"health probe cus-sec_SpcGetCertNo failed: {exc.__class__.__name__} {exc}".strip())
            return
        if result.ok and result.data:
            self.status.cert_no = str(result.data[0])
        self.status.last_probe_at = time.time()
        self._publish()

    async def _load_card_facts(self) -> None:
        """certNo, enterprise name and certificate, asked once per connection."""
        timeout = self.config.request_timeout
        try:
            for method, field in (
                ("cus-sec_SpcGetCertNo", "cert_no"),
                ("cus-sec_SpcGetEntName", "ent_name"),
                ("cus-sec_SpcGetSignCertAsPEM", "certificate"),
            ):
                result = await self._card_call(method, {}, timeout)
                if not (result.ok and result.data):
                    continue
                value = str(result.data[0])
                if field == "certificate":
                    if self.hooks.inspect_certificate is None:
                        continue
                    try:
                        facts = self.hooks.inspect_certificate(value)
                    except ValueError as exc:
                        self._record_error(f"card certificate unreadable: {exc}")
                        continue
                    self.status.algorithm = facts.algorithm
                    self.status.cert_subject = facts.subject
                    self.status.cert_not_after = facts.not_after
                    self.status.cert_organization = facts.organization
                else:
                    setattr(self.status, field, value)
        except (asyncio.TimeoutError, CardConnectionLost):
            logger.warning("card %s: could not read card facts after connecting", self.config.slug)
        self._publish()

    # --- connection supervision -------------------------------------------------------
    async def _supervise(self) -> None:
        """Connect, wait for the connection to end, reconnect: at once after a deliberate
        reset, otherwise with capped exponential backoff and full jitter."""
        attempt = 0
        while True:
            try:
                conn = await self._connect()
            except (OSError, asyncio.TimeoutError, InvalidHandshake, InvalidURI, ConnectionError, ConnectionClosed) as exc:
                attempt += 1
                delay = random.uniform(0, min(self.config.reconnect_max, self.config.reconnect_min * 2 ** min(attempt, 16)))
                delay = max(delay, self.config.reconnect_min / 2)
                self._record_error(f"connect to {self.config.url} failed: {exc.__class__.__name__}: {exc}")
                self.status.reconnect_attempts = attempt
                if not self._reported_down and not self._stopping:  # once per outage, not once per attempt
                    self._reported_down = True
                    self._card_event(CARD_DISCONNECTED, "CARD_DISCONNECTED", self.status.last_error)
                if self._reset_requested.is_set():
                    # The reset could not reconnect: requests waiting for it now fail fast.
                    self._reset_requested.clear()
                    self._fail_queued_fast()
                self._publish()
                if attempt == 1 or attempt % 10 == 0:
                    logger.warning("card %s: cannot connect (%s); retrying in %.1fs", self.config.slug, self.status.last_error, delay)
                await asyncio.sleep(delay)
                continue
            attempt = 0
            if hasattr(conn, "on_answer"):
                conn.on_answer = self._answered  # the next request goes out as an answer comes in
            self._conn = conn
            self.status.connected = True
            self.status.connected_since = time.time()
            self.status.down_since = self.status.accepting_until = None
            self.status.reconnect_attempts = 0
            self.status.connections += 1
            logger.info("card %s: connected to %s", self.config.slug, self.config.url)
            if self.status.connections == 1:
                self._card_event(CARD_CONNECTED, EVENT_OK, f"connected to {self.config.url}")
            else:
                self._card_event(CARD_RECONNECTED, EVENT_OK,
                                 f"reconnected to {self.config.url} (connection {self.status.connections})")
            self._reported_down = False
            self._enqueue(_CONNECTED)
            self._reset_requested.clear()
            self._connected.set()
            self._publish()
            await conn.closed.wait()
            self._conn = None
            self._connected.clear()
            self.status.connected = False
            self.status.connected_since = None
            if self._reset_requested.is_set():
                logger.warning("card %s: connection reset after a timeout; reconnecting", self.config.slug)
                self._publish()
                continue  # a deliberate reset reconnects at once; queued requests wait for it
            self._record_error(f"disconnected: {conn.close_reason}")
            if self._stopping:  # the gateway is being stopped: its card_gateway_stopped event says so
                logger.info("card %s: %s while stopping", self.config.slug, self.status.last_error)
                return
            logger.warning("card %s: %s", self.config.slug, self.status.last_error)
            self._reported_down = True
            self._card_event(CARD_DISCONNECTED, "CARD_DISCONNECTED", self.status.last_error)
            # Queued and new requests wait up to reconnect_wait for the reconnect (a control
            # that drops its socket is usually back within a second).
            self.status.down_since = time.time()
            self.status.accepting_until = self.status.down_since + self.config.reconnect_wait
            self._publish()
            await asyncio.sleep(random.uniform(0, self.config.reconnect_min))

    async def _connect_url(self) -> CardConnection:
        return await CardConnection.open(self.config.url, slug=self.config.slug,
                                         connect_timeout=self.config.connect_timeout,
                                         max_frame_bytes=self.config.max_frame_bytes)

    def _fail_queued_fast(self) -> None:
        """Requests waiting for a card that just went away get an answer now."""
        pending = []
        while not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for item in pending:
            if isinstance(item, _Job):
                self._depth -= 1
                asyncio.create_task(self._reply_error(item, UKEY_UNAVAILABLE, f"card {self.config.slug} disconnected: {self.status.last_error}"))
        self.status.queue_depth = self._depth

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            self._publish()

    # --- status and replies ---------------------------------------------------------------
    def _card_event(self, event_type: str, outcome: str, message: str) -> None:
        """Write a card event in the background: the card's work never waits for the database."""
        task = asyncio.create_task(self._card_event_write(event_type, outcome, message[:500]))
        self._event_tasks.add(task)
        task.add_done_callback(self._event_tasks.discard)

    async def _card_event_write(self, event_type: str, outcome: str, message: str) -> None:
        try:
            await self.hooks.record_event(CardEvent(slug=self.config.slug, url=self.config.url, kind=event_type,
                                                    outcome=outcome, message=message))
        except Exception as exc:  # the card keeps working when the audit store does not
            logger.error("card %s: could not record %s: %s", self.config.slug, event_type, exc.__class__.__name__)

    def _record_error(self, text: str, card: bool = False) -> None:
        self.status.last_error = text
        self.status.last_error_at = time.time()
        if card:
            self.status.card_errors += 1

    def _publish(self, throttle: bool = False) -> None:
        now = time.time()
        if throttle and now - self._last_publish < _PUBLISH_THROTTLE:
            return
        self._last_publish = now
        self.status.queue_depth = self._depth
        self.status.in_flight = self._outstanding
        self.status.heartbeat_at = now
        try:
            self.hooks.publish_status(self.status)
        except Exception as exc:  # a status store that is down must not stop the card
            logger.warning("card %s: could not publish its status: %s", self.config.slug, exc.__class__.__name__)

    async def _reply(self, job: _Job, payload: dict[str, Any]) -> None:
        reply_to = job.message.get("reply")
        if not reply_to and job.reply_future is None:
            return
        reply = reply_message(job.message, device=self.config.slug, cert_no=self.status.cert_no,
                              algorithm=self.status.algorithm, payload=payload)
        if job.reply_future is not None:
            if not job.reply_future.done():  # the caller may have given up (timeout)
                job.reply_future.set_result(reply)
            return
        try:
            await self.layer.send(reply_to, reply)
        except Exception:  # a caller that went away must not stop the gateway
            logger.warning("card %s: could not deliver a reply to %s", self.config.slug, reply_to)

    async def _reply_error(self, job: _Job, code: str, message: str) -> None:
        await self._reply(job, {"ok": False, "code": code, "message": message, "result": None})


