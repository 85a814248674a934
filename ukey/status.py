"""A card's live status, as its gateway sees it. The gateway hands it to its host's
`publish_status` hook (the platform keeps it in the cache for every process)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

# A gateway publishes every 2 s; older than this means it is not running.
STALE_AFTER = 8.0


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
    cert_organization: str = ""  # the certificate subject's O=: the card's enterprise
    reconnect_attempts: int = 0
    connections: int = 0
    card_errors: int = 0
    # The Unix socket of the process that runs the gateway (ukey/link.py); "" when it has none.
    link: str = ""
    heartbeat_at: float = 0.0
    down_since: float | None = None  # the connection dropped then (None: connected, or never was)
    accepting_until: float | None = None  # requests may wait for the reconnect until then

    @property
    def alive(self) -> bool:
        """The gateway owning this card has published recently."""
        return self.gateway_running and (time.time() - self.heartbeat_at) < STALE_AFTER

    @property
    def can_sign(self) -> bool:
        return self.alive and self.connected

    @property
    def accepting(self) -> bool:
        """Connected, or just dropped and reconnecting (a request may wait for it)."""
        return self.connected or (self.accepting_until is not None and time.time() < self.accepting_until)

    @property
    def enterprise(self) -> str:
        """The enterprise the card belongs to: its certificate's organization, else the
        name the card itself reports."""
        return self.cert_organization or self.ent_name

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceStatus:
        """From `as_dict()` output, ignoring fields this version does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
