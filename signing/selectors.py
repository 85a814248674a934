"""Reads about card devices: configuration joined with the gateway's live status."""

from __future__ import annotations

import datetime
from typing import Any

from django.utils.translation import gettext

from ukey.status import DeviceStatus

from .cards import device_status_get
from .models import CardDevice, CardPool


def _iso(ts: float | None) -> str | None:
    if not ts:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat()


def card_device_states(*, display: bool = False) -> list[dict[str, Any]]:
    """Every enabled card with its live state (disconnected when no gateway reports); with
    `display`, the platform's own words in the active language (for people)."""
    not_running = gettext("gateway not running") if display else "gateway not running"
    states = []
    for device in CardDevice.objects.filter(enabled=True).order_by("slug"):
        current = device_status_get(device.slug) or DeviceStatus(slug=device.slug, url=device.url, gateway_running=False)
        connected = current.can_sign
        states.append(
            {
                "slug": device.slug,
                "name": str(device),
                "connected": connected,
                "gateway_running": current.alive,
                "since": _iso(current.connected_since) if connected else None,
                "last_ok_at": _iso(current.last_ok_at),
                "last_error": current.last_error or (not_running if not current.alive else ""),
                "last_error_at": _iso(current.last_error_at),
                "queue_depth": current.queue_depth if current.alive else 0,
                "cert_no": current.cert_no or None,
                "algorithm": current.algorithm or None,
                "ent_name": current.ent_name or None,
                "cert_not_after": current.cert_not_after or None,
            }
        )
    return states


def card_pool_states(*, display: bool = False) -> list[dict[str, Any]]:
    """Every enabled pool: its capacity (cards up / enabled cards) and each card's state (why a
    card is not used: in English, or with `display` in the active language, for people)."""
    from .pools import pool_cards, pool_load

    states = []
    for slug in CardPool.objects.filter(enabled=True).order_by("slug").values_list("slug", flat=True):
        info = pool_load(slug)
        if info is None:  # deleted meanwhile
            continue
        enterprise, cards = pool_cards(info, display=display)
        up = sum(1 for c in cards if c.up)
        states.append({
            "slug": info.slug,
            "name": info.name,
            "enterprise": enterprise or None,
            "up": up,
            "size": len(cards),
            "capacity": f"{up}/{len(cards)}",
            "cards": [{"slug": c.slug, "up": c.up, "reason": c.reason} for c in cards],
        })
    return states
