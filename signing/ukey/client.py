"""`ukey_call`: the one way the rest of the platform reaches a card.

It sends a `ukey.request` to the card's gateway over the channel layer and waits for
the reply on a fresh reply channel. Expected failures are raised as `UKeyError`
subclasses carrying the API error code (UKEY_ERROR / UKEY_TIMEOUT / UKEY_UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings

from accessids.encryption import secret_encrypt
from signplatform.logging import request_id_var

from . import gateway, status
from .protocol import CardResult


class UKeyError(Exception):
    """A card call that did not produce a successful card result."""

    code = gateway.UKEY_ERROR
    http_status = 502

    def __init__(self, message: str, *, device: str = "", errors: list[str] | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.device = device
        self.errors = list(errors or [])
        self.retry_after = retry_after


class UKeyCardError(UKeyError):
    """The card answered `Result:false`; `errors` is its Error list."""


class UKeyTimeout(UKeyError):
    code = gateway.UKEY_TIMEOUT
    http_status = 504


class UKeyUnavailable(UKeyError):
    """No card connected, the gateway is not running, or the card's queue is full."""

    code = gateway.UKEY_UNAVAILABLE
    http_status = 503


_ERRORS = {cls.code: cls for cls in (UKeyCardError, UKeyTimeout, UKeyUnavailable)}


@dataclass(frozen=True)
class UKeyResponse:
    device: str
    method: str
    result: CardResult
    cert_no: str = ""
    algorithm: str = ""
    duration: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def default_device() -> str:
    return settings.UKEY_DEFAULT_DEVICE


async def ukey_call(
    method: str,
    args: dict[str, Any] | None = None,
    *,
    device: str | None = None,
    timeout: float | None = None,
    raise_card_errors: bool = True,
    fallback_pin: str | None = None,
) -> UKeyResponse:
    """Run one card method on `device` (the default card when None).

    The card PIN is added by the gateway; a `passwd` in `args` is dropped.
    `fallback_pin` is used only when the device has no PIN configured (legacy clients).
    Raises UKeyUnavailable at once when the card's gateway is down, the card is not
    connected or its queue is full; UKeyTimeout after `timeout` seconds (default
    UKEY_CALL_TIMEOUT); UKeyCardError when the card answers Result:false and
    `raise_card_errors` is set.
    """
    slug = device or default_device()
    timeout = settings.UKEY_CALL_TIMEOUT if timeout is None else timeout
    current = status.device_status_get(slug)
    if current is None or not current.alive:
        raise UKeyUnavailable(f"no gateway is running for card {slug}", device=slug, retry_after=5)
    if not current.connected:
        raise UKeyUnavailable(
            f"card {slug} is not connected: {current.last_error or 'connecting'}", device=slug, retry_after=5
        )

    layer = get_channel_layer()
    # The default prefix on purpose: channels_redis serves every process-local channel
    # from one Redis key per process, and mixing prefixes starves the receivers.
    reply_channel = await layer.new_channel()
    deadline = time.time() + timeout
    message = {
        "type": "ukey.request",
        "id": uuid.uuid4().hex,
        "reply": reply_channel,
        "method": method,
        "args": {k: v for k, v in (args or {}).items() if k != "passwd"},
        "deadline": deadline,
        "request_id": request_id_var.get(),
    }
    if fallback_pin:
        message["fallback_pin"] = secret_encrypt(fallback_pin, purpose=gateway.FALLBACK_PIN_PURPOSE)
    try:
        await layer.send(gateway.CHANNEL_PREFIX + slug, message)
    except ChannelFull:
        raise UKeyUnavailable(f"card {slug} queue is full", device=slug, retry_after=1) from None
    try:
        reply = await asyncio.wait_for(layer.receive(reply_channel), timeout=max(0.1, deadline - time.time()) + 1.0)
    except asyncio.TimeoutError:
        raise UKeyTimeout(f"card {slug} did not answer {method} within {timeout:.1f}s", device=slug) from None

    if reply.get("result") is None:
        error_cls = _ERRORS.get(reply.get("code"), UKeyUnavailable)
        raise error_cls(
            reply.get("message") or "card call failed",
            device=slug,
            retry_after=1 if error_cls is UKeyUnavailable else None,
        )
    raw = reply["result"]
    result = CardResult(ok=raw.get("Result") is True, data=list(raw.get("Data") or []), errors=list(raw.get("Error") or []))
    response = UKeyResponse(
        device=slug,
        method=method,
        result=result,
        cert_no=reply.get("cert_no") or "",
        algorithm=reply.get("algorithm") or "",
        duration=float(reply.get("duration") or 0.0),
    )
    if raise_card_errors and not result.ok:
        raise UKeyCardError(f"card {slug} refused {method}: {result.message}", device=slug, errors=result.errors)
    return response


ukey_call_sync = async_to_sync(ukey_call)
