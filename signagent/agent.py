"""The agent: two connections kept alive independently — to the local E-Port control, and out
to the platform — and the calls the platform sends carried from one to the other.

- E-Port: `ukey.connection.CardConnection` (the handshake, `_id` matching); reconnected with
  capped exponential backoff and jitter; its state is reported to the platform on every change
  and every 10 s.
- Platform: a WebSocket to `<platform>/agent/v1` with the agent token, TLS verified (and the
  certificate optionally pinned by SHA-256), pinged both ways; reconnected like the card.
- Calls: only methods the platform allows AND the card package's pass-through list are sent
  to the card; a PIN kept here (`--pin-env`) is added here and never sent to the platform;
  a `reset` from the platform drops the E-Port connection (a late answer reaches nobody).
- A stalled control (`restart_after` consecutive timeouts, or a failed idle probe) runs the
  restart command at most once per cooldown, waits for the control, and reports
  card.agent_restarted."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from signagent import __version__, system
from ukey import agentproto, protocol
from ukey.connection import CardConnection, CardConnectionLost

logger = logging.getLogger("signagent")

PROBE_METHOD = "cus-sec_SpcGetCertNo"


@dataclass
class AgentConfig:
    platform_url: str  # ws(s)://host[:port][/agent/v1]
    token: str
    eport_url: str = "ws://127.0.0.1:61232"
    pin: str = ""  # kept here: never sent to the platform
    restart_command: str = ""
    restart_after: int = 3  # consecutive timeouts (or failed probes) before the restart command
    restart_cooldown: float = 300.0
    restart_wait: float = 60.0  # for the control to come back after the command
    restart_timeout: float = 60.0  # the command itself
    probe_interval: float = 30.0  # probe the control after this long without a call
    connect_timeout: float = 10.0
    reconnect_min: float = 0.5
    reconnect_max: float = 10.0
    ca_file: str = ""
    pin_sha256: list[str] = field(default_factory=list)  # accepted server certificate fingerprints
    max_frame_bytes: int = 64 * 1024 * 1024
    host: str = field(default_factory=system.host_name)

    def __repr__(self) -> str:  # never the token or the PIN
        return f"AgentConfig(platform_url={self.platform_url!r}, eport_url={self.eport_url!r})"

    @property
    def endpoint(self) -> str:
        url = self.platform_url.rstrip("/")
        return url if url.endswith(agentproto.AGENT_PATH) else url + agentproto.AGENT_PATH


class _PinnedSSLObject(ssl.SSLObject):
    """Fails the TLS handshake unless the server's certificate has one of `pins` (SHA-256 of DER)."""

    pins: frozenset = frozenset()

    def do_handshake(self) -> None:
        super().do_handshake()  # raises SSLWantReadError until the handshake is done
        seen = hashlib.sha256(self.getpeercert(binary_form=True) or b"").hexdigest()
        if seen not in self.pins:
            raise ssl.SSLCertVerificationError(f"the platform's TLS certificate (SHA-256 {seen}) is not a pinned one")


def backoff(attempt: int, low: float, high: float) -> float:
    """Capped exponential backoff with full jitter (never below half the minimum)."""
    return max(low / 2, random.uniform(0, min(high, low * 2 ** min(attempt, 16))))


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.card: CardConnection | None = None
        self.card_up = asyncio.Event()
        self.card_error = "not connected yet"
        self.cert_no = ""
        self.link = None  # the platform WebSocket
        self.allowed: frozenset[str] = frozenset()
        self.stopping = asyncio.Event()
        self.timeouts = 0  # consecutive calls (or probes) the control did not answer in time
        self.last_restart = 0.0
        self.last_call = time.monotonic()
        self.restarting = False
        self.fatal = ""  # the platform refused us for good (bad token): stop retrying
        self._tasks: set[asyncio.Task] = set()

    # --- running ---------------------------------------------------------------------------------
    async def run(self) -> int:
        loops = [asyncio.create_task(self._card_loop(), name="eport"),
                 asyncio.create_task(self._platform_loop(), name="platform"),
                 asyncio.create_task(self._watch(), name="watch")]
        await self.stopping.wait()
        for task in loops + list(self._tasks):
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        if self.card is not None:
            await self.card.close()
        return 2 if self.fatal else 0

    def stop(self) -> None:
        self.stopping.set()

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the E-Port control ----------------------------------------------------------------------
    async def _card_loop(self) -> None:
        attempt = 0
        while not self.stopping.is_set():
            try:
                card = await CardConnection.open(self.config.eport_url, slug="agent",
                                                 connect_timeout=self.config.connect_timeout,
                                                 max_frame_bytes=self.config.max_frame_bytes)
            except (OSError, asyncio.TimeoutError, InvalidHandshake, InvalidURI, ConnectionError,
                    ConnectionClosed) as exc:
                attempt += 1
                self._card_state(False, f"cannot connect to {self.config.eport_url}: {exc.__class__.__name__}")
                if attempt == 1 or attempt % 20 == 0:
                    logger.warning("E-Port control: %s", self.card_error)
                await asyncio.sleep(backoff(attempt, self.config.reconnect_min, self.config.reconnect_max))
                continue
            attempt = 0
            self.card = card
            logger.info("E-Port control connected at %s", self.config.eport_url)
            self._card_state(True, "")
            self._spawn(self._learn_cert_no(card))
            await card.closed.wait()
            self.card = None
            self._card_state(False, f"disconnected: {card.close_reason}")
            logger.warning("E-Port control %s", self.card_error)
            await asyncio.sleep(random.uniform(0, self.config.reconnect_min))

    async def _learn_cert_no(self, card: CardConnection) -> None:
        try:
            result = await asyncio.wait_for(await card.send(PROBE_METHOD, {}), timeout=self.config.connect_timeout)
        except (asyncio.TimeoutError, CardConnectionLost):
            return
        if result.ok and result.data:
            self.cert_no = str(result.data[0])
            self._status_send()

    def _card_state(self, up: bool, error: str) -> None:
        changed = up != self.card_up.is_set() or error != self.card_error
        self.card_error = error
        if up:
            self.card_up.set()
        else:
            self.card_up.clear()
        if changed:
            self._status_send()

    def _eport(self) -> dict[str, Any]:
        return agentproto.eport_state(connected=self.card_up.is_set(), cert_no=self.cert_no,
                                      last_error=self.card_error)

    def _status_send(self) -> None:
        if self.link is not None:
            self._spawn(self._send(agentproto.status_message(eport=self._eport())))

    async def _send(self, text: str) -> None:
        link = self.link
        if link is None:
            return
        try:
            await link.send(text)
        except ConnectionClosed:
            pass

    # --- the platform ------------------------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext | None:
        """Verified TLS (the system's CAs, or --ca-file); with pins, the certificate is checked
        inside the TLS handshake, before a byte of the request (and so the token) is sent."""
        if not self.config.endpoint.startswith("wss://"):
            return None
        context = ssl.create_default_context(cafile=self.config.ca_file or None)
        if self.config.pin_sha256:
            pins = frozenset(p.lower().replace(":", "") for p in self.config.pin_sha256)
            context.sslobject_class = type("PinnedSSLObject", (_PinnedSSLObject,), {"pins": pins})
        return context

    async def _platform_loop(self) -> None:
        attempt = 0
        while not self.stopping.is_set():
            try:
                link = await connect(
                    self.config.endpoint, ssl=self._ssl(), open_timeout=self.config.connect_timeout,
                    additional_headers={"Authorization": f"Bearer {self.config.token}",
                                        "User-Agent": f"signagent/{__version__}"},
                    ping_interval=10, ping_timeout=20, max_size=self.config.max_frame_bytes, compression=None,
                )
            except InvalidStatus as exc:
                attempt += 1
                logger.error("the platform refused the connection: HTTP %s", exc.response.status_code)
                await asyncio.sleep(backoff(attempt, self.config.reconnect_min, self.config.reconnect_max))
                continue
            except (OSError, asyncio.TimeoutError, InvalidHandshake, InvalidURI, ConnectionError) as exc:
                attempt += 1
                if attempt == 1 or attempt % 20 == 0:
                    logger.warning("cannot reach the platform at %s: %s: %s", self.config.endpoint,
                                   exc.__class__.__name__, exc)
                await asyncio.sleep(backoff(attempt, self.config.reconnect_min, self.config.reconnect_max))
                continue
            reason = await self._session(link)
            self.link = None
            if self.fatal:
                logger.error("stopping: %s", self.fatal)
                self.stop()
                return
            logger.warning("platform link closed (%s); reconnecting", reason)
            attempt = 0 if reason.startswith("replaced") else attempt + 1
            await asyncio.sleep(backoff(attempt, self.config.reconnect_min, self.config.reconnect_max))

    async def _session(self, link) -> str:
        self.link = link
        await link.send(agentproto.hello_message(version=__version__, host=self.config.host,
                                                 pin_local=bool(self.config.pin), eport=self._eport()))
        status_task = asyncio.create_task(self._status_loop())
        bye = ""
        try:
            async for text in link:
                try:
                    message = agentproto.message_parse(text)
                except agentproto.AgentProtocolError:
                    logger.warning("the platform sent a frame that is not an agent message; ignored")
                    continue
                kind = message["type"]
                if kind == "welcome":
                    self.allowed = frozenset(m for m in message.get("methods") or [] if m in protocol.RPC_METHODS)
                    logger.info("connected to the platform as card %s (%d card methods allowed)",
                                message.get("device"), len(self.allowed))
                elif kind == "call":
                    self._spawn(self._call(message))
                elif kind == "reset":
                    # The platform waited in vain for an answer: that counts as a timeout here too.
                    self._timed_out(f"the platform reset the connection ({message.get('reason')})")
                elif kind == "bye":
                    bye = str(message.get("reason") or "")
                    logger.warning("the platform ends the link: %s", bye)
                else:
                    logger.warning("the platform sent a %r message, which it does not send; ignored", kind)
        except ConnectionClosed:
            pass
        finally:
            status_task.cancel()
        code = link.close_code
        if code == agentproto.CLOSE_UNAUTHORIZED:
            self.fatal = f"the platform refused this agent: {bye or 'bad token'}"
        if code == agentproto.CLOSE_REPLACED:
            return f"replaced: {bye}"
        return bye or f"code {code}"

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(agentproto.STATUS_INTERVAL)
            await self._send(agentproto.status_message(eport=self._eport()))

    # --- calls ---------------------------------------------------------------------------------------
    async def _call(self, message: dict[str, Any]) -> None:
        call_id, method = message.get("id"), message.get("method")
        args = message.get("args") if isinstance(message.get("args"), dict) else {}
        if isinstance(call_id, bool) or not isinstance(call_id, int):
            logger.warning("the platform sent a call without an id; ignored")
            return
        if method not in self.allowed:
            logger.warning("refused to forward %r: not a method this agent may send to the card", method)
            await self._send(agentproto.result_message(call_id=call_id, error=f"{method!r} is not forwarded"))
            return
        args = {k: v for k, v in args.items() if not (self.config.pin and k == "passwd")}
        if self.config.pin and method in protocol.PIN_METHODS:
            args["passwd"] = self.config.pin
        timeout = message.get("timeout") if isinstance(message.get("timeout"), (int, float)) else 10.0
        self.last_call = time.monotonic()
        card = self.card
        if card is None:
            await self._send(agentproto.result_message(call_id=call_id,
                                                       error=f"E-Port control not connected: {self.card_error}"))
            return
        try:
            future = await card.send(method, args)
            result = await asyncio.wait_for(future, timeout=float(timeout) + 1.0)
        except asyncio.TimeoutError:
            self._timed_out(f"{method} got no answer in {timeout:.1f} s")
            await self._send(agentproto.result_message(call_id=call_id, error="the E-Port control did not answer"))
            return
        except CardConnectionLost as exc:
            await self._send(agentproto.result_message(call_id=call_id, error=f"E-Port connection lost: {exc}"))
            return
        self.timeouts = 0
        await self._send(agentproto.result_message(call_id=call_id, result=result))

    # --- a stalled control ---------------------------------------------------------------------------
    def _timed_out(self, what: str) -> None:
        self.timeouts += 1
        logger.warning("E-Port control: %s (%d in a row)", what, self.timeouts)
        card = self.card
        if card is not None:
            card.abort()  # a late answer must not reach the next call
        if self.timeouts >= self.config.restart_after:
            self._spawn(self._restart(what))

    async def _watch(self) -> None:
        """Probe the control when idle: a failed probe counts like a timed-out call."""
        while True:
            await asyncio.sleep(min(5.0, self.config.probe_interval))
            card = self.card
            if card is None or time.monotonic() - self.last_call < self.config.probe_interval:
                continue
            self.last_call = time.monotonic()
            try:
                result = await asyncio.wait_for(await card.send(PROBE_METHOD, {}),
                                                timeout=self.config.connect_timeout)
            except asyncio.TimeoutError:
                self._timed_out("the health probe got no answer")
                continue
            except CardConnectionLost:
                continue
            self.timeouts = 0
            if result.ok and result.data:
                self.cert_no = str(result.data[0])

    async def _restart(self, why: str) -> None:
        if not self.config.restart_command or self.restarting:
            return
        if self.last_restart and time.monotonic() - self.last_restart < self.config.restart_cooldown:
            return
        self.restarting = True
        self.last_restart = time.monotonic()
        try:
            logger.error("the E-Port control has stalled (%s): running the restart command", why)
            code, output = await asyncio.get_running_loop().run_in_executor(
                None, system.restart_command_run, self.config.restart_command, self.config.restart_timeout)
            self.timeouts = 0
            if self.card is not None:
                self.card.abort()
            came_back = True
            try:
                await asyncio.sleep(0.5)
                await asyncio.wait_for(self.card_up.wait(), timeout=self.config.restart_wait)
            except asyncio.TimeoutError:
                came_back = False
            text = (f"E-Port control stalled ({why}); restart command exited with "
                    f"{'a timeout' if code is None else code}{': ' + output if output else ''}; the control "
                    f"{'is back' if came_back else f'was not back within {self.config.restart_wait:.0f} s'}")
            logger.warning(text)
            await self._send(agentproto.event_message(kind=agentproto.EVENT_AGENT_RESTARTED, message=text))
        finally:
            self.restarting = False
