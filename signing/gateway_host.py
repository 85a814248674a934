"""The platform hosts the card gateways (ukey/gateway.py): in the web process (embedded
mode) or in `manage.py ukey_gateway --device SLUG` processes.

The host gives each gateway its device configuration (from `CardDevice`, the PIN
decrypted), and its hooks: status to the cache (signing/cards.py), card events to the
audit log, the PIN a legacy client sent unsealed, the certificate read by core.certs."""

from __future__ import annotations

import asyncio
import logging
import random

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from audit.services import audit_event_record
from core import certs
from core.logging import redaction_register
from ukey import messages
from ukey.gateway import CardEvent, CardGateway, CertificateFacts, DeviceConfig, GatewayHooks
from ukey.link import LinkServer
from ukey.messages import reply_message

from .cards import device_status_publish, fallback_pin_unseal, local_gateways
from .models import CardDevice
from .services import card_device_pin

logger = logging.getLogger("signing.gateway_host")

# The gateways running in this process, by device slug (callers here hand them requests directly).
running_gateways: dict[str, CardGateway] = local_gateways


@database_sync_to_async
def card_event_record(event: CardEvent) -> None:
    """A card event in the audit log (connects, disconnects, failed operations, probes)."""
    audit_event_record(event_type=event.kind, source="gateway", device=event.slug, outcome=event.outcome,
                       message=event.message, details={"url": event.url})


def certificate_inspect(pem: str) -> CertificateFacts:
    info = certs.certificate_load(pem)
    return CertificateFacts(algorithm=info.algorithm, subject=info.subject, not_after=info.not_after.isoformat(),
                            organization=info.organization)


@database_sync_to_async
def _url_devices() -> dict[str, tuple]:
    """The enabled cards the platform dials, each with what its gateway is configured from."""
    rows = CardDevice.objects.filter(enabled=True, transport=CardDevice.TRANSPORT_URL).values_list(
        "slug", "url", "pin_encrypted", "connect_timeout", "request_timeout", "queue_size", "pipeline_depth")
    return {row[0]: row[1:] for row in rows}


def gateway_hooks() -> GatewayHooks:
    return GatewayHooks(
        publish_status=device_status_publish,
        record_event=card_event_record,
        unseal_pin=fallback_pin_unseal,
        inspect_certificate=certificate_inspect,
    )


@database_sync_to_async
def device_config_load(slug: str) -> DeviceConfig:
    device = CardDevice.objects.get(slug=slug)
    pin = card_device_pin(device=device)
    redaction_register(pin)
    return DeviceConfig(
        slug=device.slug,
        url=device.url,
        pin=pin,
        connect_timeout=device.connect_timeout,
        request_timeout=device.request_timeout,
        queue_size=device.queue_size,
        probe_interval=settings.UKEY_PROBE_INTERVAL,
        reconnect_min=settings.UKEY_RECONNECT_MIN,
        reconnect_max=settings.UKEY_RECONNECT_MAX,
        max_frame_bytes=settings.UKEY_MAX_FRAME_BYTES,
        pipeline_depth=device.pipeline_depth,
        call_timeout=settings.UKEY_CALL_TIMEOUT,
        reconnect_wait=settings.UKEY_RECONNECT_WAIT,
    )


class GatewayHost:
    """Runs the gateways of a set of card devices inside the current event loop (the web
    process, or `manage.py ukey_gateway`), each fed from its channel `ukey.<slug>`.

    The listener rides out a channel-layer outage (Redis restarting): it retries with capped
    backoff and the gateway keeps its card connection meanwhile, so signing resumes within
    a second or two of the layer coming back. Callers get UKEY_UNAVAILABLE in between."""

    RECEIVE_RETRY_MIN = 0.1
    RECEIVE_RETRY_MAX = 2.0

    def __init__(self, slugs: list[str], *, connect=None, configure=None, link_path: str = "") -> None:
        """`connect` (an async callable) opens each card connection instead of dialling the
        device's URL; `configure(config)` may adjust the loaded DeviceConfig (the agent host
        gives both). `link_path`: a Unix socket on which the other processes of this host hand
        these gateways their requests (ukey/link.py; the `ukey_gateway` process)."""
        self.slugs = slugs
        self.link = LinkServer(link_path, self._link_serve) if link_path else None
        self.layer = get_channel_layer()
        self.gateways: dict[str, CardGateway] = {}
        self._listeners: dict[str, asyncio.Task] = {}
        self._connect = connect
        self._configure = configure

    async def start(self) -> None:
        if self.link is not None:
            try:
                await self.link.start()
                logger.info("card link on %s", self.link.path)
            except OSError as exc:
                logger.warning("no card link (%s): callers use the channel layer", exc)
                self.link = None
        for slug in self.slugs:
            await self.add(slug)

    async def _link_serve(self, device: str, message: dict, reply_future: asyncio.Future) -> None:
        """A request that came over the card link: to the card's gateway, as from the layer."""
        gateway = self.gateways.get(device)
        if gateway is None:
            reply_future.set_result(reply_message(
                message, device=device, cert_no="", algorithm="",
                payload={"ok": False, "code": messages.UKEY_UNAVAILABLE, "result": None,
                         "message": f"no gateway for card {device} runs in this process"}))
            return
        await gateway.submit(message, reply_future=reply_future)

    async def add(self, slug: str) -> None:
        """Start serving one more card."""
        config = await device_config_load(slug)
        if self._configure is not None:
            config = self._configure(config)
        gateway = CardGateway(config, self.layer, gateway_hooks(), connect=self._connect)
        if self.link is not None:
            gateway.status.link = self.link.path
        gateway.start()
        self.gateways[slug] = running_gateways[slug] = gateway
        self._listeners[slug] = asyncio.create_task(self._listen(slug, gateway), name=f"ukey-listener-{slug}")
        logger.info("card %s: gateway started for %s", slug, config.url)

    async def remove(self, slug: str, grace: float | None = None, reason: str = "the card was removed") -> None:
        """Stop serving a card: drain its queue (up to `grace`), then close its connection."""
        gateway, listener = self.gateways.pop(slug, None), self._listeners.pop(slug, None)
        if gateway is not None:
            await gateway.shutdown(settings.UKEY_SHUTDOWN_GRACE if grace is None else grace, reason)
            running_gateways.pop(slug, None)
        if listener is not None:
            listener.cancel()
            await asyncio.wait([listener], timeout=2)

    async def follow_devices(self, interval: float = 2.0) -> None:
        """Keep the served cards those of the database: a card device added, enabled, edited
        (URL, PIN, timeouts, queue, pipeline) or disabled/removed in the admin takes effect
        within `interval` seconds, without a restart. For hosts of every URL card."""
        initial = await _url_devices()
        served = {slug: initial.get(slug, ()) for slug in self.gateways}
        while True:
            try:
                wanted = await _url_devices()
            except Exception as exc:  # the database is down: keep what runs
                logger.warning("could not read the card devices (%s); retrying", exc.__class__.__name__)
                await asyncio.sleep(interval)
                continue
            for slug in [s for s in self.gateways if s not in wanted or wanted[s] != served.get(s)]:
                what = "changed" if slug in wanted else "disabled or removed"
                logger.info("card %s: %s; stopping its gateway", slug, what)
                await self.remove(slug, grace=2.0, reason=f"the card device was {what}")
                served.pop(slug, None)
            for slug, fingerprint in wanted.items():
                if slug not in self.gateways:
                    try:
                        await self.add(slug)
                    except Exception:
                        logger.exception("card %s: its gateway could not start", slug)
                        continue
                    served[slug] = fingerprint
            await asyncio.sleep(interval)

    async def _listen(self, slug: str, gateway: CardGateway) -> None:
        channel = messages.device_channel(slug)
        failures = 0
        while True:
            try:
                message = await self.layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if failures == 1 or failures % 50 == 0:
                    logger.warning("card %s: the channel layer cannot be read (%s: %s); retrying", slug,
                                   exc.__class__.__name__, exc)
                delay = min(self.RECEIVE_RETRY_MAX, self.RECEIVE_RETRY_MIN * 2 ** min(failures, 8))
                await asyncio.sleep(random.uniform(delay / 2, delay))
                continue
            if failures:
                logger.info("card %s: the channel layer is back after %d failed reads", slug, failures)
                failures = 0
            kind = message.get("type")
            if kind == messages.REQUEST:
                await gateway.submit(message)
            elif kind == messages.RESET:
                gateway.reset(str(message.get("reason") or "requested by a caller"))

    async def wait(self) -> None:
        """Until a listener or a gateway task fails (a bug: the process should be restarted);
        runs for ever otherwise. Cards come and go meanwhile (`follow_devices`)."""
        while True:
            tasks = [*self._listeners.values(), *(t for g in self.gateways.values() for t in g.tasks)]
            for task in tasks:
                if task.done():
                    if not task.cancelled() and task.exception():
                        raise task.exception()
                    if task in self._listeners.values() or not self._stopping_any(task):
                        raise RuntimeError(f"a gateway task ended: {task.get_name()}")
            await asyncio.sleep(1.0)

    def _stopping_any(self, task: asyncio.Task) -> bool:
        """A gateway task that ended because its gateway is being removed."""
        return any(task in gateway.tasks and gateway.stopping for gateway in self.gateways.values())

    async def stop(self, grace: float | None = None, reason: str = "planned shutdown") -> None:
        """Drain first, while the listeners keep answering new requests ("shutting down"),
        then stop listening."""
        grace = settings.UKEY_SHUTDOWN_GRACE if grace is None else grace
        gateways = list(self.gateways.values())
        await asyncio.gather(*(gateway.shutdown(grace, reason) for gateway in gateways), return_exceptions=True)
        for gateway in gateways:
            running_gateways.pop(gateway.config.slug, None)
        for listener in self._listeners.values():
            listener.cancel()
        if self._listeners:
            # A channel layer's receive may not end at once on cancel; never wait for ever.
            await asyncio.wait(list(self._listeners.values()), timeout=2)
        self._listeners.clear()
        self.gateways.clear()
        if self.link is not None:
            await self.link.close()
