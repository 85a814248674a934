"""Per-card status, published by the gateway to the cache and read by every process."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from django.core.cache import cache

STATUS_TTL = 60
# A gateway publishes every 2 s; older than this means it is not running.
STALE_AFTER = 8.0
_THROTTLE = 0.5
_last_publish: dict[str, float] = {}


@dataclasses.dataclass
class DeviceStatus:
    slug: str
    url: str = ""
    gateway_running: bool = True
    connected: bool = False
    connected_since: float | None = None
    last_ok_at: float | None = None
    last_error: str = ""
    last_error_at: float | None = None
    last_probe_at: float | None = None
    queue_depth: int = 0
    in_flight: int = 0
    cert_no: str = ""
    algorithm: str = ""
    ent_name: str = ""
    cert_subject: str = ""
    cert_not_after: str = ""
    reconnect_attempts: int = 0
    connections: int = 0
    card_errors: int = 0
    heartbeat_at: float = 0.0

    @property
    def alive(self) -> bool:
        """The gateway owning this card has published recently."""
        return self.gateway_running and (time.time() - self.heartbeat_at) < STALE_AFTER

    @property
    def can_sign(self) -> bool:
        return self.alive and self.connected


def _key(slug: str) -> str:
    return f"ukey:status:{slug}"


def device_status_publish(status: DeviceStatus, *, throttle: bool = False) -> None:
    now = time.time()
    if throttle and now - _last_publish.get(status.slug, 0.0) < _THROTTLE:
        return
    _last_publish[status.slug] = now
    status.heartbeat_at = now
    cache.set(_key(status.slug), dataclasses.asdict(status), STATUS_TTL)


def device_status_get(slug: str) -> DeviceStatus | None:
    """The last published status of a card, or None if no gateway ever published one."""
    data: dict[str, Any] | None = cache.get(_key(slug))
    if not data:
        return None
    known = {f.name for f in dataclasses.fields(DeviceStatus)}
    return DeviceStatus(**{k: v for k, v in data.items() if k in known})
