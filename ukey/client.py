"""The caller's side of the channel-layer contract (ukey/messages.py): send one card
operation to a card's gateway and wait for its reply.

`card_call` is given everything it needs (the layer, the card's last status, the
timeout, a sealed PIN), so it works with any channel layer that has `new_channel`,
`send` and `receive`. The platform's `signing.cards.ukey_call` fills these in from its
settings. Expected failures are raised as `UKeyError` subclasses carrying the API
error code (UKEY_ERROR / UKEY_TIMEOUT / UKEY_UNAVAILABLE)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from . import messages
from .link import LinkClient, LinkNotConnected, LinkUnavailable
from .protocol import CARD_NOT_DONE_ERRORS, CardResult
from .status import DeviceStatus


class UKeyError(Exception):
    """A card call that did not produce a successful card result."""

    code = messages.UKEY_ERROR
    http_status = 502

    def __init__(self, message: str, *, device: str = "", errors: list[str] | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.device = device
        self.errors = list(errors or [])
        self.retry_after = retry_after


class UKeyCardError(UKeyError):
    """The card answered `Result:false`; `errors` is its Error list. `not_done` marks an
    answer the platform refused (e.g. a signature that does not verify): nothing was handed out."""

    not_done = False


class UKeyTimeout(UKeyError):
    code = messages.UKEY_TIMEOUT
    http_status = 504


class UKeyUnavailable(UKeyError):
    """No card connected, the gateway is not running, or the card's queue is full."""

    code = messages.UKEY_UNAVAILABLE
    http_status = 503


def failed_without_answer(error: UKeyError) -> bool:
    """The card failed the request without having done it: never reached, disconnected,
    timed out, its reader reset, or an answer the platform would not hand out. Such a
    request may go to another card, if its method is repeatable."""
    if isinstance(error, (UKeyUnavailable, UKeyTimeout)):
        return True
    if isinstance(error, UKeyCardError):
        return error.not_done or CardResult(ok=False, errors=error.errors).error_code in CARD_NOT_DONE_ERRORS
    return False


_ERRORS = {cls.code: cls for cls in (UKeyCardError, UKeyTimeout, UKeyUnavailable)}


async def _layer_call(layer, method: str, args: dict[str, Any] | None, *, device: str, deadline: float,
                      request_id: str, sealed_pin: str | None, timeout: float,
                      queue_full: tuple[type[BaseException], ...]) -> dict[str, Any]:
    """The request over the channel layer to the card's gateway; its reply message."""
    try:
        reply_channel = await layer.new_channel()
        message = messages.request_message(
            request=uuid.uuid4().hex, reply=reply_channel, method=method, args=args or {}, deadline=deadline,
            request_id=request_id, sealed_pin=sealed_pin,
        )
        await layer.send(messages.device_channel(device), message)
    except queue_full:
        raise UKeyUnavailable(f"card {device} queue is full", device=device, retry_after=1) from None
    except Exception as exc:  # the layer itself (Redis) is down: nothing was sent
        raise UKeyUnavailable(f"card {device} cannot be reached: the channel layer failed ({exc.__class__.__name__})",
                              device=device, retry_after=2) from None
    try:
        return await asyncio.wait_for(layer.receive(reply_channel), timeout=max(0.1, deadline - time.time()) + 1.0)
    except asyncio.TimeoutError:
        raise UKeyTimeout(f"card {device} did not answer {method} within {timeout:.1f}s", device=device) from None
    except Exception as exc:
        raise UKeyUnavailable(f"card {device}: the channel layer failed while waiting for the answer "
                              f"({exc.__class__.__name__})", device=device, retry_after=2) from None


async def _local_call(gateway, method: str, args: dict[str, Any] | None, *, device: str, deadline: float,
                      request_id: str, sealed_pin: str | None, timeout: float) -> dict[str, Any]:
    """The request handed to the card's gateway in this process; its reply message."""
    message = messages.request_message(request=uuid.uuid4().hex, reply="", method=method, args=args or {},
                                       deadline=deadline, request_id=request_id, sealed_pin=sealed_pin)
    future = asyncio.get_running_loop().create_future()
    await gateway.submit(message, reply_future=future)
    try:
        return await asyncio.wait_for(future, timeout=max(0.1, deadline - time.time()) + 1.0)
    except asyncio.TimeoutError:
        raise UKeyTimeout(f"card {device} did not answer {method} within {timeout:.1f}s", device=device) from None


async def _link_call(link: LinkClient, method: str, args: dict[str, Any] | None, *, device: str, deadline: float,
                     request_id: str, sealed_pin: str | None, timeout: float) -> dict[str, Any]:
    """The request over the card link to the process that runs the card's gateway."""
    message = messages.request_message(request=uuid.uuid4().hex, reply="", method=method, args=args or {},
                                       deadline=deadline, request_id=request_id, sealed_pin=sealed_pin)
    try:
        return await link.call(device, message, timeout=max(0.1, deadline - time.time()) + 1.0)
    except asyncio.TimeoutError:
        raise UKeyTimeout(f"card {device} did not answer {method} within {timeout:.1f}s", device=device) from None
    except LinkNotConnected:
        raise
    except LinkUnavailable as exc:
        raise UKeyUnavailable(f"card {device}: {exc}", device=device, retry_after=2) from None


@dataclass(frozen=True)
class UKeyResponse:
    device: str
    method: str
    result: CardResult
    cert_no: str = ""
    algorithm: str = ""
    duration: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


async def card_call(
    layer,
    method: str,
    args: dict[str, Any] | None = None,
    *,
    device: str,
    status: DeviceStatus | None,
    timeout: float,
    raise_card_errors: bool = True,
    fallback_pin: str | None = None,
    pin_seal: Callable[[str], str] | None = None,
    request_id: str = "",
    queue_full: tuple[type[BaseException], ...] = (),
    gateway: Any = None,
    link: LinkClient | None = None,
) -> UKeyResponse:
    """Run one card method on `device`, whose last published status is `status`.
    `fallback_pin` (a PIN the client sent) crosses the layer sealed by `pin_seal`. With
    `gateway` (the card's `CardGateway`, running in this process) the request is handed to it
    directly instead of crossing the channel layer: the same queue, the same reply; with `link`
    (ukey/link.py, to the process that runs it) it crosses that socket, or the channel layer
    when the socket cannot be opened.

    Raises UKeyUnavailable at once when the card's gateway is down, the card is not
    connected or its queue is full (`layer.send` raised one of `queue_full`); UKeyTimeout
    after `timeout` seconds; UKeyCardError when the card answers Result:false and
    `raise_card_errors` is set."""
    if status is None or not status.alive:
        raise UKeyUnavailable(f"no gateway is running for card {device}", device=device, retry_after=5)
    if not status.accepting:
        raise UKeyUnavailable(
            f"card {device} is not connected: {status.last_error or 'connecting'}", device=device, retry_after=5
        )

    # The default prefix on purpose: channels_redis serves every process-local channel
    # from one Redis key per process, and mixing prefixes starves the receivers.
    sealed_pin = None
    if fallback_pin:
        if pin_seal is None:
            raise ValueError("a fallback PIN needs pin_seal: it never crosses the layer in clear")
        sealed_pin = pin_seal(fallback_pin)
    deadline = time.time() + timeout
    if gateway is not None:
        reply = await _local_call(gateway, method, args, device=device, deadline=deadline, request_id=request_id,
                                  sealed_pin=sealed_pin, timeout=timeout)
    elif link is not None:
        try:
            reply = await _link_call(link, method, args, device=device, deadline=deadline, request_id=request_id,
                                     sealed_pin=sealed_pin, timeout=timeout)
        except LinkNotConnected:
            reply = await _layer_call(layer, method, args, device=device, deadline=deadline, request_id=request_id,
                                      sealed_pin=sealed_pin, timeout=timeout, queue_full=queue_full)
    else:
        reply = await _layer_call(layer, method, args, device=device, deadline=deadline, request_id=request_id,
                                  sealed_pin=sealed_pin, timeout=timeout, queue_full=queue_full)
    if reply.get("result") is None:
        error_cls = _ERRORS.get(reply.get("code"), UKeyUnavailable)
        raise error_cls(
            reply.get("message") or "card call failed",
            device=device,
            retry_after=1 if error_cls is UKeyUnavailable else None,
        )
    raw = reply["result"]
    result = CardResult(ok=raw.get("Result") is True, data=list(raw.get("Data") or []), errors=list(raw.get("Error") or []))
    response = UKeyResponse(
        device=device,
        method=method,
        result=result,
        cert_no=reply.get("cert_no") or "",
        algorithm=reply.get("algorithm") or "",
        duration=float(reply.get("duration") or 0.0),
    )
    if raise_card_errors and not result.ok:
        raise UKeyCardError(f"card {device} refused {method}: {result.message}", device=device, errors=result.errors)
    return response
