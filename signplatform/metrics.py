"""Prometheus metrics at `GET /metrics` (text exposition format, `prometheus_client`).

Who may scrape: a client whose address (`core.networks.client_address`, so X-Forwarded-For
counts only from TRUSTED_PROXIES) is in METRICS_ALLOWED_NETWORKS (default 127.0.0.1/32 and
::1/128), or any client sending `Authorization: Bearer <METRICS_TOKEN>` (compared in
constant time; without METRICS_TOKEN only the networks are allowed). Anyone else gets a
plain-text 403 that says nothing more. (uvicorn, as `runplatform` starts it, also rewrites the
peer address from X-Forwarded-For when the connection comes from 127.0.0.1/::1 — its
FORWARDED_ALLOW_IPS default — before Django sees it.)

Counters are fed by `AuditEvent` post_save (after the transaction commits) **in the process
that wrote the event**, so they are per process: every web process is its own scrape target
(scrape each process on its own address, not through a load balancer; Prometheus sums the
targets, and a restart resets that target's counters, which `rate()`/`increase()` handle).
Events written in other processes are not counted by a web process: the card events of a
`manage.py ukey_gateway` process (UKEY_GATEWAY_MODE=external) and the changes made by
management commands. The card gauges are read at scrape time from the state the gateways
publish to the shared cache, so they are right in every process and every mode.

- `signplatform_requests_total{endpoint,outcome}` — every API request (native and legacy);
  `endpoint` is the method and the route template (`GET /api/v1/xml-documents/{id}`,
  `POST /getCode`), paths that match no endpoint are `other`; `outcome` is `OK` or the error code.
- `signplatform_request_duration_seconds{endpoint}` — histogram of the same requests (5 ms … 30 s),
  from the event's `duration_ms` (a self-rotation's event has none: it is counted, not timed).
- `signplatform_nonce_rejections_total` — replays: requests refused with DUPLICATE_REQUEST (a
  nonce used before). A malformed X-Nonce (INVALID_NONCE) is a client bug, not a replay: it is
  counted in `auth_failures_total{code="INVALID_NONCE"}` only.
- `signplatform_auth_failures_total{code}` — requests refused by the authentication checks
  (spec §1 checks 1–4: headers, nonce format, timestamp, access ID, address, signature), native or legacy.
- `signplatform_rotations_total{source}` — App Secret rotations (`api` self-rotation, `admin`,
  `command`).
- `signplatform_card_events_total{device,event}` — card events written by a gateway in this
  process (`connected`, `reconnected`, `disconnected`, `error`, `probe_failed`).
- `signplatform_card_up{device}` (1 when the card can sign), `signplatform_card_queue_depth{device}`,
  `signplatform_card_certificate_expiry_timestamp_seconds{device}` (when the certificate is known).
- `signplatform_sign_fast_path_total{result}` — `POST /api/v1/sign` requests this process
  answered on its fast path (`served`) or handed to the lean handler (`handed_over`: another
  shape of request, one that the signature checks refuse, a body the view would refuse, a nonce
  used before); api/fastsign.py.
- the usual `process_*` and `python_*` metrics of this process.
"""

from __future__ import annotations

import datetime
import functools
import hmac
import ipaddress
import logging
import re

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver
from django.http import HttpResponse
from django.urls import Resolver404, resolve
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from accessids.profiles import AUDIT_PROFILES
from api.fastsign import COUNTS as FAST_PATH_COUNTS
from audit.models import AuditEvent
from core.dbthread import db_sync_to_async
from core.networks import address_in, client_address, networks_parse
from signing.selectors import card_device_states

logger = logging.getLogger(__name__)

PREFIX = "signplatform"
OTHER = "other"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# The codes of the authentication checks (spec §1 checks 1–4), native and legacy.
AUTH_FAILURE_CODES = (
    "MISSING_AUTH_HEADERS",
    "PROFILE_NOT_ENABLED",
    "INVALID_NONCE",
    "INVALID_TIMESTAMP",
    "INVALID_ACCESS_ID",
    "ACCESS_ID_DISABLED",
    "IP_NOT_ALLOWED",
    "SIGNATURE_VALIDATION_FAILED",
)
NONCE_REJECTION_CODES = frozenset({"DUPLICATE_REQUEST"})
ROTATION_SOURCES = ("api", "admin", "command")
CARD_EVENTS = {
    AuditEvent.CARD_CONNECTED: "connected",
    AuditEvent.CARD_RECONNECTED: "reconnected",
    AuditEvent.CARD_DISCONNECTED: "disconnected",
    AuditEvent.CARD_ERROR: "error",
    AuditEvent.CARD_PROBE_FAILED: "probe_failed",
}
_OUTCOME_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,39}$")
_ROUTE_PARAM_RE = re.compile(r"<(?:\w+:)?(\w+)>")

disable_created_metrics()  # no `*_created` series next to every counter and histogram

# A registry of our own (not prometheus_client's global one): what /metrics shows is
# exactly this, and tests never see metrics registered elsewhere.
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

REQUESTS = Counter(
    f"{PREFIX}_requests_total", "API requests (native and legacy) by endpoint and outcome code.",
    ["endpoint", "outcome"], registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    f"{PREFIX}_request_duration_seconds", "Duration of API requests, as written in their audit events.",
    ["endpoint"], buckets=DURATION_BUCKETS, registry=REGISTRY,
)
NONCE_REJECTIONS = Counter(
    f"{PREFIX}_nonce_rejections_total", "Requests refused because their nonce was used before (DUPLICATE_REQUEST).",
    registry=REGISTRY,
)
AUTH_FAILURES = Counter(
    f"{PREFIX}_auth_failures_total", "Requests refused by the authentication checks, by error code.",
    ["code"], registry=REGISTRY,
)
PROFILE_REQUESTS = Counter(
    f"{PREFIX}_profile_requests_total",
    "API requests by client profile (native, gys, x-signature, cp-md5, sign-server) and result (ok, failed).",
    ["profile", "result"], registry=REGISTRY,
)
ROTATIONS = Counter(
    f"{PREFIX}_rotations_total", "App Secret rotations, by where they were made (api, admin, command).",
    ["source"], registry=REGISTRY,
)
CARD_EVENTS_TOTAL = Counter(
    f"{PREFIX}_card_events_total", "Card events recorded by a gateway running in this process.",
    ["device", "event"], registry=REGISTRY,
)
for _code in AUTH_FAILURE_CODES:
    AUTH_FAILURES.labels(code=_code)
for _source in ROTATION_SOURCES:
    ROTATIONS.labels(source=_source)


# --- labels -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def endpoint_label(endpoint: str) -> str:
    """"METHOD /path" → "METHOD /route/template" of the URL it resolves to, or "other".
    The result is one of a small fixed set whatever the clients send."""
    method, _, path = (endpoint or "").partition(" ")
    if method not in METHODS or not path.startswith("/"):
        return OTHER
    try:
        match = resolve(path)
    except Resolver404:
        return OTHER
    except Exception:  # a path the resolver chokes on is just not an endpoint
        return OTHER
    route = match.route or ""
    if match.url_name == "api-not-found" or any(ch in route for ch in "^$\\()[]*+?|"):
        return OTHER
    template = _ROUTE_PARAM_RE.sub(lambda m: "{id}" if m.group(1) in ("pk", "id") else "{%s}" % m.group(1), route)
    return f"{method} /{template}"


def _outcome_label(outcome: str) -> str:
    return outcome if _OUTCOME_RE.match(outcome or "") else "OTHER"


def _is_request(event: AuditEvent) -> bool:
    """The one event of an API request: "api.request", or the change a request made when it
    is that request's event (a self-rotation writes "accessid.rotated" with the endpoint and
    HTTP status instead)."""
    if event.event_type == AuditEvent.API_REQUEST:
        return True
    return event.source in ("api", "legacy") and event.http_status is not None and bool(event.endpoint)


def _event_count(event: AuditEvent) -> None:
    if _is_request(event):
        endpoint = endpoint_label(event.endpoint)
        outcome = _outcome_label(event.outcome)
        REQUESTS.labels(endpoint=endpoint, outcome=outcome).inc()
        if event.duration_ms is not None and event.duration_ms >= 0:
            REQUEST_DURATION.labels(endpoint=endpoint).observe(event.duration_ms / 1000.0)
        if outcome in NONCE_REJECTION_CODES:
            NONCE_REJECTIONS.inc()
        if outcome in AUTH_FAILURE_CODES:
            AUTH_FAILURES.labels(code=outcome).inc()
        if event.profile in AUDIT_PROFILES:
            PROFILE_REQUESTS.labels(profile=event.profile, result="ok" if outcome == AuditEvent.OK else "failed").inc()
    if event.event_type == AuditEvent.ACCESS_ID_ROTATED:
        ROTATIONS.labels(source=event.source if event.source in ROTATION_SOURCES else OTHER).inc()
    elif event.event_type in CARD_EVENTS:
        CARD_EVENTS_TOTAL.labels(device=event.device or "unknown", event=CARD_EVENTS[event.event_type]).inc()


@receiver(post_save, sender=AuditEvent, dispatch_uid="signplatform.metrics.audit_event_saved")
def audit_event_saved(sender, instance: AuditEvent, created: bool, using: str, **kwargs) -> None:
    """Count a new audit event once its transaction has committed (never a rolled-back one)."""
    if not created:
        return

    def count() -> None:
        try:
            _event_count(instance)
        except Exception:  # metrics never break a request
            logger.exception("metrics: could not count audit event %s", instance.event_type)

    transaction.on_commit(count, using=using, robust=True)


# --- card gauges, read at scrape time ------------------------------------------------------


def _timestamp(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        moment = datetime.datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


class CardStateCollector:
    """`card_up`, `card_queue_depth`, `card_certificate_expiry_timestamp_seconds` per enabled
    card, from `signing.selectors.card_device_states()` (database + shared cache) at each scrape."""

    def _families(self):
        return (
            GaugeMetricFamily(f"{PREFIX}_card_up", "1 when the card is connected and can sign, else 0.",
                              labels=["device"]),
            GaugeMetricFamily(f"{PREFIX}_card_queue_depth", "Requests waiting for the card.", labels=["device"]),
            GaugeMetricFamily(f"{PREFIX}_card_certificate_expiry_timestamp_seconds",
                              "Unix time when the card's signing certificate expires.", labels=["device"]),
        )

    def describe(self):
        return list(self._families())

    def collect(self):
        up, depth, expiry = self._families()
        try:
            states = card_device_states()
        except Exception as exc:
            logger.warning("metrics: card states unavailable: %s", exc.__class__.__name__)
            states = []
        for state in states:
            slug = state["slug"]
            up.add_metric([slug], 1.0 if state["connected"] else 0.0)
            depth.add_metric([slug], float(state.get("queue_depth") or 0))
            not_after = _timestamp(state.get("cert_not_after"))
            if not_after is not None:
                expiry.add_metric([slug], not_after)
        return [up, depth, expiry]


REGISTRY.register(CardStateCollector())


class FastPathCollector:
    """`sign_fast_path_total{result}`: `POST /api/v1/sign` requests this process's fast path
    served, and those it handed to the lean handler (api/fastsign.py; both 0 with API_FAST_PATH=0)."""

    def collect(self):
        family = CounterMetricFamily(f"{PREFIX}_sign_fast_path", "POST /api/v1/sign requests by the path that "
                                     "answered them: served by the fast path, or handed over to the lean handler.",
                                     labels=["result"])
        for result, count in FAST_PATH_COUNTS.items():
            family.add_metric([result], float(count))
        return [family]


REGISTRY.register(FastPathCollector())


# --- the view -------------------------------------------------------------------------------


def _address_allowed(address: str | None) -> bool:
    try:  # an IPv4 client seen through an IPv6 socket
        mapped = getattr(ipaddress.ip_address(address), "ipv4_mapped", None) if address else None
    except ValueError:
        mapped = None
    return address_in(str(mapped) if mapped else address,
                      networks_parse(tuple(settings.METRICS_ALLOWED_NETWORKS)))


def _token_ok(request) -> bool:
    expected = settings.METRICS_TOKEN or ""
    if not expected:
        return False
    scheme, _, provided = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(provided.strip().encode("utf-8"), expected.encode("utf-8"))


def scrape_allowed(request) -> bool:
    return _address_allowed(client_address(request)) or _token_ok(request)


def metrics_render(accept: str = "") -> tuple[bytes, str]:
    """(body, content type) of the current metrics, in the format the scraper accepts."""
    encoder, content_type = choose_encoder(accept)
    return encoder(REGISTRY), content_type


@require_GET
async def metrics_view(request):
    """`GET /metrics`; 403 for anyone not allowed (see the module docstring)."""
    if not scrape_allowed(request):
        return HttpResponse("forbidden\n", status=403, content_type="text/plain; charset=utf-8")
    body, content_type = await db_sync_to_async(metrics_render)(request.headers.get("Accept", ""))
    return HttpResponse(body, content_type=content_type)
