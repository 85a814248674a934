"""Which card a request uses: a card device, or a card pool whose least-loaded connected
card is chosen (and, when that card fails without answering, one other card of the pool).

A pool's cards must belong to one enterprise: the pool's configured enterprise, else the
enterprise of its first connected card (by slug). A card of another enterprise, a card that
is down and a card that just failed are never chosen."""

from __future__ import annotations

import dataclasses
import logging
import random
import re
import time
from collections import defaultdict
from typing import Any, Awaitable, Callable, TypeVar

from django.conf import settings
from django.utils.translation import gettext, ngettext

from core.dbthread import db_sync_to_async
from core.errors import invalid_request, permission_denied
from ukey.client import UKeyError, UKeyUnavailable, failed_without_answer
from ukey.status import DeviceStatus

from .cards import card_deadline, device_status_get
from .models import CardDevice, CardPool

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SLUG = re.compile(r"[-a-zA-Z0-9_]{1,50}")
POOL_TTL = 2.0  # a pool's cards, as this process knows them, are re-read this often
SUSPECT_FOR = 3.0  # a card that failed a request is not chosen again for this long
# The response header that names the card a request used (every card endpoint sets it).
CARD_HEADER = "X-Card-Device"


@dataclasses.dataclass(frozen=True)
class PoolInfo:
    slug: str
    name: str
    devices: tuple[str, ...]  # its enabled cards, by slug
    enterprise: str  # configured; "" = that of its first connected card
    enabled: bool = True


@dataclasses.dataclass(frozen=True)
class CardTarget:
    """What a request asked for: one card, or a pool."""

    device: str = ""
    pool: PoolInfo | None = None

    @property
    def name(self) -> str:
        return self.pool.slug if self.pool else self.device


@dataclasses.dataclass(frozen=True)
class PoolCard:
    slug: str
    up: bool
    reason: str  # why it is not used ("" when up)
    enterprise: str
    load: int  # requests this process has on it
    reported: int = 0  # queued and in flight, as its gateway last published


# --- pools, from the database (kept a moment in this process) --------------------------------

_pools: dict[str, tuple[float, PoolInfo | None]] = {}


def pool_load(slug: str) -> PoolInfo | None:
    """The pool `slug` (None if there is none), re-read at most every POOL_TTL seconds."""
    cached = _pools.get(slug)
    if cached and time.monotonic() - cached[0] < POOL_TTL:
        return cached[1]
    info = pool_read(slug)
    _pools[slug] = (time.monotonic(), info)
    return info


def pool_read(slug: str) -> PoolInfo | None:
    """The pool `slug` as the database says now (None if there is none)."""
    row = CardPool.objects.filter(slug=slug).first()
    info = None
    if row is not None:
        devices = tuple(row.devices.filter(enabled=True).order_by("slug").values_list("slug", flat=True))
        enterprise = row.enterprise.strip() or _enterprise_learn(row, devices)
        info = PoolInfo(slug=row.slug, name=str(row), devices=devices, enterprise=enterprise, enabled=row.enabled)
    return info


def _enterprise_learn(row: CardPool, devices: tuple[str, ...]) -> str:
    """A pool saved before its cards were connected belongs to the enterprise its connected
    cards name, once they agree: kept in the pool (and audited), so that it never drifts to
    whichever card happens to be left."""
    from audit.models import AuditEvent
    from audit.services import audit_event_record

    named = {}
    for slug in devices:
        status = device_status_get(slug)
        if status is not None and status.can_sign and status.enterprise:
            named.setdefault(status.enterprise, slug)
    if len(named) != 1:
        return ""
    ((enterprise, card),) = named.items()
    if CardPool.objects.filter(pk=row.pk, enterprise="").update(enterprise=enterprise):
        audit_event_record(event_type=AuditEvent.CARD_POOL_CHANGED, source="platform", device=row.slug,
                           message=f"enterprise taken from card {card}: {enterprise}",
                           details={"changed": ["enterprise"], "enterprise": enterprise, "from_card": card})
    return enterprise


def pools_forget() -> None:
    """Re-read every pool on its next use (after a change in this process)."""
    _pools.clear()


def card_target_choose(*, devices: tuple[str, ...], pools: tuple[str, ...], requested: str | None) -> CardTarget:
    """The card or pool a request will use: the one it names (if the access ID may use it:
    one of its cards, one of its pools or a card in one of them; an access ID with neither
    may name any), else its first pool, else its first card, else the platform's default card.
    Reads the database (call from a thread) unless the default pool is known already."""
    if not requested:
        if pools:
            return CardTarget(pool=_pool_usable(pools[0]))
        return CardTarget(device=devices[0] if devices else settings.UKEY_DEFAULT_DEVICE)
    if not _SLUG.fullmatch(requested):
        raise invalid_request(f"no card device {requested[:60]!r}", {"device": ["unknown card device or pool"]})
    pool = pool_load(requested)
    if pool is not None:
        if (devices or pools) and requested not in pools:
            raise permission_denied(f"this access ID may not use card pool {requested!r}")
        return CardTarget(pool=_pool_usable(requested))
    if devices or pools:
        member = any(requested in (pool_load(slug) or PoolInfo("", "", (), "")).devices for slug in pools)
        if requested not in devices and not member:
            raise permission_denied(f"this access ID may not use card device {requested!r}")
    if not CardDevice.objects.filter(slug=requested, enabled=True).exists():
        raise invalid_request(f"no enabled card device {requested!r}", {"device": ["unknown card device or pool"]})
    return CardTarget(device=requested)


def _pool_usable(slug: str) -> PoolInfo:
    pool = pool_load(slug)
    if pool is None or not pool.enabled:
        raise UKeyUnavailable(f"card pool {slug} is {'disabled' if pool else 'gone'}", device=slug, retry_after=30)
    return pool


async def card_target_for(*, devices: tuple[str, ...], pools: tuple[str, ...], requested: str | None) -> CardTarget:
    """`card_target_choose` without a thread hop when nothing needs the database."""
    if not requested and (not pools or _fresh(pools[0])):
        return card_target_choose(devices=devices, pools=pools, requested=None)
    return await db_sync_to_async(card_target_choose)(devices=devices, pools=pools, requested=requested)


def _fresh(slug: str) -> bool:
    cached = _pools.get(slug)
    return bool(cached) and time.monotonic() - cached[0] < POOL_TTL


# --- choosing a card ------------------------------------------------------------------------------

_load: dict[str, int] = defaultdict(int)  # requests this process has on each card
_suspect: dict[str, float] = {}  # card -> monotonic time until which it is not chosen


def _english(text: str) -> str:
    return text


def pool_cards(pool: PoolInfo, *, display: bool = False) -> tuple[str, list[PoolCard]]:
    """The pool's enterprise and each of its cards, up or why not: the reasons in English (for
    errors, logs and JSON), or with `display` in the active language (for people)."""
    _ = gettext if display else _english  # `_`: what makemessages extracts
    statuses = {slug: device_status_get(slug) for slug in pool.devices}
    enterprise = pool.enterprise  # "" until its cards have named one (pool_load keeps it then)
    now = time.monotonic()
    cards = []
    for slug in pool.devices:
        status = statuses[slug] or DeviceStatus(slug=slug, gateway_running=False)
        if not status.alive:
            reason = _("gateway not running")
        elif not status.connected:
            reason = _("not connected: %(error)s") % {"error": status.last_error or _("connecting")}
        elif enterprise and status.enterprise and status.enterprise != enterprise:
            reason = _("belongs to %(enterprise)s, not to %(expected)s") % {"enterprise": status.enterprise,
                                                                            "expected": enterprise}
        elif _suspect.get(slug, 0) > now:
            reason = _("failed a request a moment ago")
        else:
            reason = ""
        cards.append(PoolCard(slug=slug, up=not reason, reason=reason, enterprise=status.enterprise,
                              load=_load[slug], reported=status.queue_depth + status.in_flight))
    return enterprise, cards


def _pick(pool: PoolInfo, exclude: list[str]) -> str:
    """The least-loaded usable card of the pool (this process's requests on it first, then
    what its gateway last reported, ties at random)."""
    _, cards = pool_cards(pool)
    candidates = [c for c in cards if c.up and c.slug not in exclude]
    if not candidates:
        why = "; ".join(f"{c.slug}: {c.reason or 'just failed'}" for c in cards) or "it has no enabled card"
        raise UKeyUnavailable(f"no card of pool {pool.slug} can sign ({why})", device=pool.slug, retry_after=5)

    return min(candidates, key=lambda card: (card.load, card.reported, random.random())).slug


async def card_target_run(target: CardTarget, operation: Callable[[str], Awaitable[T]], *,
                          repeatable: bool = True, trace: dict[str, Any] | None = None) -> T:
    """Run `operation(card)` for the target. For a pool: on its least-loaded usable card,
    and if that card fails without having answered (see `failed_without_answer`) once more
    on another card, if the operation is `repeatable`, within the request's time
    (UKEY_CALL_TIMEOUT from the start). `trace` gets the card that was used ("device"),
    the pool and, after a failover, the card that failed and why."""
    trace = {} if trace is None else trace
    trace["device"] = target.name  # until a card is chosen (a pool with no usable card)
    if target.pool is None:
        return await operation(target.device)
    pool = target.pool
    trace["pool"] = pool.slug
    deadline = time.time() + settings.UKEY_CALL_TIMEOUT
    token = card_deadline.set(deadline)
    tried: list[str] = []
    try:
        card = _pick(pool, tried)
        while True:
            tried.append(card)
            trace["device"] = card
            _load[card] += 1
            try:
                return await operation(card)
            except UKeyError as exc:
                if not failed_without_answer(exc):
                    raise
                _suspect[card] = time.monotonic() + SUSPECT_FOR
                if not repeatable or len(tried) > 1 or deadline - time.time() < 0.5:
                    raise
                try:
                    following = _pick(pool, tried)
                except UKeyUnavailable:
                    raise exc from None
                logger.warning("pool %s: card %s failed (%s: %s); the request goes to card %s",
                               pool.slug, card, exc.code, exc.message, following)
                trace["failover"] = {"from": card, "code": exc.code, "message": exc.message[:300]}
            finally:
                _load[card] -= 1
            card = following
    finally:
        card_deadline.reset(token)


def card_trace_audit(trace: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """An audit event's fields with the card a request used: `device` is the card that
    signed (or failed last); for a pool, `details` gains the pool and any failover."""
    if trace.get("device"):
        fields["device"] = trace["device"]
    if trace.get("pool"):
        details = dict(fields.get("details") or {})
        details["pool"] = trace["pool"]
        if trace.get("failover"):
            details["failover"] = trace["failover"]
        fields["details"] = details
    return fields


# --- checking a pool's cards ---------------------------------------------------------------------


class PoolEnterpriseError(ValueError):
    """The cards of a pool belong to different enterprises."""


def pool_enterprise_check(*, devices: list[str], enterprise: str) -> str:
    """The enterprise a pool of `devices` belongs to: `enterprise` if given, else the one
    its connected cards' certificates name (empty when none is connected yet). Raises
    PoolEnterpriseError naming the cards when they do not all belong to it."""
    seen: dict[str, list[str]] = {}
    for slug in sorted(devices):
        status = device_status_get(slug)
        if status is not None and status.enterprise:
            seen.setdefault(status.enterprise, []).append(slug)
    expected = enterprise.strip() or (next(iter(seen)) if len(seen) == 1 else "")
    if not enterprise.strip() and len(seen) > 1:
        names = "; ".join(f"{', '.join(cards)}: {name}" for name, cards in seen.items())
        raise PoolEnterpriseError(gettext("the cards belong to different enterprises (%(names)s); a pool is one "
                                          "enterprise's") % {"names": names})
    foreign = {name: cards for name, cards in seen.items() if name != expected}
    if foreign:
        names = "; ".join(ngettext("%(cards)s belongs to %(enterprise)s", "%(cards)s belong to %(enterprise)s",
                                   len(cards)) % {"cards": ", ".join(cards), "enterprise": name}
                          for name, cards in foreign.items())
        raise PoolEnterpriseError(gettext("every card must belong to %(expected)s: %(names)s")
                                  % {"expected": expected, "names": names})
    return expected
