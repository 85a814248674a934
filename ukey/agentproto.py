"""The card agent's link to the platform: the messages both ends exchange, as pure functions,
and the platform's view of the card behind an agent (`AgentCardConnection`), which the card
gateway uses exactly like a direct WebSocket to an E-Port control.

The agent dials out to `wss://<platform>/agent/v1` with `Authorization: Bearer <agent token>`.
Then, one JSON object per text frame, each with a "type":

    agent → platform  hello   {version, host, pin_local, eport: {connected, cert_no, last_error}}
    platform → agent  welcome {device, methods: [...the card methods it may forward]}
    platform → agent  call    {id, method, args, timeout}        one card operation
    agent → platform  result  {id, result: {Result, Data, Error}} or {id, error: "..."} (not sent to the card)
    platform → agent  reset   {reason}   drop the E-Port connection and reconnect (an answer came too late)
    agent → platform  status  {eport: {...}}                       on every change, and every 10 s
    agent → platform  event   {kind, message}                      e.g. card.agent_restarted
    platform → agent  bye     {reason}   the platform ends the link (token revoked, replaced by another)

WebSocket pings keep the link alive both ways. Ids are the platform's; the agent maps them to
its own E-Port `_id`s, so an answer can reach only the call it belongs to."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable

from .connection import CardConnectionLost
from .protocol import CardResult

AGENT_PATH = "/agent/v1"
# The card event an agent reports after it restarted a stalled E-Port client.
EVENT_AGENT_RESTARTED = "card.agent_restarted"
PROTOCOL_VERSION = 1
STATUS_INTERVAL = 10.0
TYPES = frozenset({"hello", "welcome", "call", "result", "reset", "status", "event", "bye"})
# WebSocket close codes the platform uses (4000-4999 are the application's).
CLOSE_UNAUTHORIZED = 4401
CLOSE_REPLACED = 4409
CLOSE_REVOKED = 4403
CLOSE_PROTOCOL = 4400


class AgentProtocolError(ValueError):
    """A frame that is not one of the messages above."""


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def message_parse(text: str | bytes) -> dict[str, Any]:
    try:
        message = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise AgentProtocolError("the frame is not JSON") from None
    if not isinstance(message, dict) or message.get("type") not in TYPES:
        raise AgentProtocolError("the frame is not an agent message")
    return message


def eport_state(*, connected: bool, cert_no: str = "", last_error: str = "") -> dict[str, Any]:
    return {"connected": bool(connected), "cert_no": str(cert_no or "")[:64], "last_error": str(last_error or "")[:300]}


def hello_message(*, version: str, host: str, pin_local: bool, eport: dict[str, Any]) -> str:
    return _dumps({"type": "hello", "protocol": PROTOCOL_VERSION, "version": version[:40], "host": host[:100],
                   "pin_local": bool(pin_local), "eport": eport})


def welcome_message(*, device: str, methods: list[str]) -> str:
    return _dumps({"type": "welcome", "protocol": PROTOCOL_VERSION, "device": device, "methods": list(methods)})


def call_message(*, call_id: int, method: str, args: dict[str, Any], timeout: float) -> str:
    return _dumps({"type": "call", "id": call_id, "method": method, "args": args, "timeout": round(timeout, 3)})


def result_message(*, call_id: int, result: CardResult | None = None, error: str = "") -> str:
    if result is None:
        return _dumps({"type": "result", "id": call_id, "error": error[:300] or "not sent to the card"})
    return _dumps({"type": "result", "id": call_id, "result": result.as_args()})


def reset_message(*, reason: str) -> str:
    return _dumps({"type": "reset", "reason": reason[:300]})


def status_message(*, eport: dict[str, Any]) -> str:
    return _dumps({"type": "status", "eport": eport})


def event_message(*, kind: str, message: str) -> str:
    return _dumps({"type": "event", "kind": kind[:40], "message": message[:500]})


def bye_message(*, reason: str) -> str:
    return _dumps({"type": "bye", "reason": reason[:300]})


def result_parse(message: dict[str, Any]) -> tuple[int | None, CardResult | None, str]:
    """(call id, the card's result or None, the agent's error text) of a result message."""
    call_id = message.get("id")
    if isinstance(call_id, bool) or not isinstance(call_id, int):
        return None, None, "a result without an id"
    raw = message.get("result")
    if isinstance(raw, dict):
        data, errors = raw.get("Data"), raw.get("Error")
        return call_id, CardResult(
            ok=raw.get("Result") is True,
            data=list(data) if isinstance(data, list) else [],
            errors=[str(e) for e in errors] if isinstance(errors, list) else [],
        ), ""
    return call_id, None, str(message.get("error") or "the agent did not send it to the card")[:300]


class AgentCardConnection:
    """The card behind an agent, as the gateway sees it: `send()` a request, await its answer,
    `abort()` after a timeout (the agent is told to reset its E-Port connection), `closed` once
    the link or the agent's E-Port connection is gone. One per E-Port connection of the agent."""

    def __init__(self, send_text: Callable[[str], Awaitable[None]], slug: str, *, request_timeout: float,
                 on_abort: Callable[[str], None]) -> None:
        self._send_text = send_text
        self.slug = slug
        self.request_timeout = request_timeout
        self._on_abort = on_abort
        self._next_id = 0
        self._pending: dict[int, asyncio.Future] = {}
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.issued: set[int] = set()  # every id handed out on this connection (for late answers)

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    async def send(self, method: str, args: dict[str, Any]) -> asyncio.Future:
        if self.closed.is_set():
            raise CardConnectionLost(self.close_reason or "the agent's card connection is gone")
        self._next_id += 1
        call_id = self._next_id
        future = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        self.issued.add(call_id)
        try:
            await self._send_text(call_message(call_id=call_id, method=method, args=args,
                                               timeout=self.request_timeout))
        except Exception as exc:
            self._pending.pop(call_id, None)
            raise CardConnectionLost(f"the link to the agent failed ({exc.__class__.__name__})") from None
        return future

    def deliver(self, call_id: int, result: CardResult | None, error: str) -> bool:
        """An answer from the agent; False when no call is waiting for this id."""
        future = self._pending.pop(call_id, None)
        if future is None:
            return False
        if not future.done():
            if result is None:
                future.set_exception(CardConnectionLost(f"the agent: {error}"))
            else:
                future.set_result(result)
        return True

    def lost(self, reason: str) -> None:
        """The link, or the agent's E-Port connection, is gone: fail what is waiting."""
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(CardConnectionLost(reason))

    def abort(self) -> None:
        """After a timeout: no late answer may reach anyone; the agent resets its E-Port link."""
        self._on_abort("an answer took too long; connection reset")
        self.lost("connection reset after a timeout")

    async def close(self) -> None:
        self.lost("closed by the platform")
