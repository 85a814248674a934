"""The platform's side of the card package (ukey/): each card's live status in the cache,
shared by every process, and `ukey_call`, the one way the rest of the platform reaches
a card (over the channel layer, to the card's gateway)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import weakref
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache

from core.encryption import MasterKeyError, secret_decrypt, secret_encrypt
from core.logging import request_id_var
from ukey import messages
from ukey.client import UKeyResponse, UKeyTimeout, UKeyUnavailable, card_call
from ukey.link import LinkClient
from ukey.status import DeviceStatus

logger = logging.getLogger(__name__)

STATUS_TTL = 60
# The card gateways running in this process, by device slug (signing.gateway_host keeps it):
# a call for one of them is handed to it directly, not over the channel layer.
local_gateways: dict[str, Any] = {}
# The time (time.time()) by which the current request's card work must be done, when a card
# pool runs it (a retry on another card gets only what is left); None: each call its own.
card_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("card_deadline", default=None)
# A PIN a legacy client sends travels to the gateway encrypted under the master key, so it
# never sits in clear in Redis (the channel layer).
FALLBACK_PIN_PURPOSE = "fallback-pin"


def _status_key(slug: str) -> str:
    return f"ukey:status:{slug}"


def device_status_publish(status: DeviceStatus) -> None:
    """A gateway's `publish_status` hook: the status, for every process."""
    cache.set(_status_key(status.slug), status.as_dict(), STATUS_TTL)


def device_status_get(slug: str, *, strict: bool = False) -> DeviceStatus | None:
    """The last published status of a card, or None if no gateway ever published one (or,
    unless `strict`, when the cache cannot be read: the card then shows as not running)."""
    try:
        data: dict[str, Any] | None = cache.get(_status_key(slug))
    except Exception as exc:
        if strict:
            raise UKeyUnavailable(f"card {slug}: its status cannot be read ({exc.__class__.__name__})",
                                  device=slug, retry_after=2) from None
        logger.warning("card %s: status unreadable: %s", slug, exc.__class__.__name__)
        return None
    return DeviceStatus.from_dict(data) if data else None


# A status read from the shared cache that lets its card be called is used again for this
# long by the process that read it. A web process reads a card's status before each call of a
# gateway in another process, and each read was a Redis round trip blocking its event loop.
# A status that does not (no gateway, card not connected) is read anew every time, so a card
# that comes back is used at once; a card that goes away meanwhile is answered for by its
# gateway over the link (UKEY_UNAVAILABLE, as the status would have said). A gateway process
# that dies looks alive in its last status for up to STALE_AFTER (8 s) anyway.
STATUS_REUSE_SECONDS = 0.5
_statuses_read: dict[str, tuple[float, DeviceStatus]] = {}


def _remote_status(slug: str) -> DeviceStatus | None:
    """`device_status_get(slug, strict=True)`, a usable status kept STATUS_REUSE_SECONDS."""
    now = time.monotonic()
    kept = _statuses_read.get(slug)
    if kept is not None and now - kept[0] < STATUS_REUSE_SECONDS:
        return kept[1]
    status = device_status_get(slug, strict=True)
    if status is not None and status.alive and status.connected:
        _statuses_read[slug] = (now, status)
    else:
        _statuses_read.pop(slug, None)
    return status


def fallback_pin_seal(pin: str) -> str:
    return secret_encrypt(pin, purpose=FALLBACK_PIN_PURPOSE)


def fallback_pin_unseal(sealed: str) -> str:
    """The gateway's `unseal_pin` hook (ValueError when this master key cannot read it)."""
    try:
        return secret_decrypt(sealed, purpose=FALLBACK_PIN_PURPOSE)
    except MasterKeyError as exc:
        raise ValueError(str(exc)) from None


async def ukey_reset(device: str, *, reason: str) -> None:
    """Ask the card's gateway to reset its connection (best effort: the layer may be down)."""
    try:
        await get_channel_layer().send(messages.device_channel(device), messages.reset_message(reason=reason))
    except Exception as exc:
        logger.error("card %s: could not ask for a connection reset (%s): %s", device, exc.__class__.__name__, reason)


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
    `raise_card_errors` is set."""
    slug = device or settings.UKEY_DEFAULT_DEVICE
    timeout = settings.UKEY_CALL_TIMEOUT if timeout is None else timeout
    until = card_deadline.get()
    if until is not None:
        left = until - time.time()
        if left <= 0.05:
            raise UKeyTimeout(f"the request's time for the card ({settings.UKEY_CALL_TIMEOUT:.0f}s) is used up",
                              device=slug)
        timeout = min(timeout, left)
    gateway = local_gateways.get(slug)
    status = gateway.status if gateway is not None else _remote_status(slug)
    link = None
    if gateway is None and status is not None and status.link and settings.UKEY_LINK:
        link = _link_client(status.link)
    return await card_call(
        get_channel_layer(),
        method,
        args,
        device=slug,
        status=status,
        timeout=timeout,
        raise_card_errors=raise_card_errors,
        fallback_pin=fallback_pin,
        pin_seal=fallback_pin_seal,
        request_id=request_id_var.get(),
        queue_full=(ChannelFull,),
        gateway=gateway,
        link=link,
    )


_links: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> {socket path: LinkClient}


def _link_client(path: str) -> LinkClient:
    """This process's connection to a gateway process's card link (one per event loop)."""
    clients = _links.setdefault(asyncio.get_running_loop(), {})
    client = clients.get(path)
    if client is None:
        client = clients[path] = LinkClient(path)
    return client
