"""IP networks: one parser, one membership test, and the client address of a request
(behind trusted proxies). Used by access ID allow-lists, TRUSTED_PROXIES and the
/metrics scrapers."""

from __future__ import annotations

import functools
import ipaddress
import logging

from django.conf import settings

logger = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=64)
def networks_parse(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    """CIDR texts → networks, once per distinct list (allow-lists, trusted proxies, metrics
    scrapers); an entry that is not a network is left out and logged once."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            logger.error("%r is not an IP network; ignored", cidr)
    return tuple(networks)


def address_in(address: str | None, networks: tuple[Network, ...]) -> bool:
    """Is `address` (text) inside one of `networks`? False for a missing or malformed address."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(request) -> str | None:
    """The client's IP: the peer, or — behind a trusted proxy — the right-most address of
    X-Forwarded-For that is not itself a trusted proxy."""
    return _client(request.META.get("REMOTE_ADDR") or None, request.META.get("HTTP_X_FORWARDED_FOR", ""))


def client_address_from(scope: dict) -> str | None:
    """`client_address` of an ASGI connection scope (a WebSocket's)."""
    client = scope.get("client") or (None, None)
    headers = dict(scope.get("headers") or [])
    return _client(client[0], headers.get(b"x-forwarded-for", b"").decode("latin-1"))


def _client(peer: str | None, forwarded: str) -> str | None:
    trusted = networks_parse(tuple(settings.TRUSTED_PROXIES))
    if not peer or not trusted or not address_in(peer, trusted):
        return peer
    for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
        if not address_in(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer
    return peer


def address_allowed(address: str | None, networks: tuple[str, ...]) -> bool:
    """An access ID's allow-list: empty allows any address."""
    return not networks or address_in(address, networks_parse(tuple(networks)))
