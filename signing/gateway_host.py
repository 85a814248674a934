"""The platform hosts the card gateways (ukey/gateway.py): in the web process (embedded
mode) or in `manage.py ukey_gateway --device SLUG` processes.

The host gives each gateway its device configuration (from `CardDevice`, the PIN
decrypted), and its hooks: status to the cache (signing/cards.py), card events to the
audit log, the PIN a legacy client sent unsealed, the certificate read by core.certs."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from audit.services import audit_event_record
from core import certs
from core.logging import redaction_register
from ukey import messages
from ukey.gateway import CardEvent, CardGateway, CertificateFacts, DeviceConfig, GatewayHooks

from .cards import device_status_publish, fallback_pin_unseal
from .models import CardDevice
from .services import card_device_pin

logger = logging.getLogger("signing.gateway_host")

# The gateways running in this process, by device slug.
running_gateways: dict[str, CardGateway] = {}


@database_sync_to_async
def card_event_record(event: CardEvent) -> None:
    """A card event in the audit log (connects, disconnects, failed operations, probes)."""
    audit_event_record(event_type=event.kind, source="gateway", device=event.slug, outcome=event.outcome,
                       message=event.message, details={"url": event.url})


def certificate_inspect(pem: str) -> CertificateFacts:
    info = certs.certificate_load(pem)
    return CertificateFacts(algorithm=info.algorithm, subject=info.subject, not_after=info.not_after.isoformat())


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
    )


class UKeyGatewayConsumer(AsyncConsumer):
    """The Channels consumer for channel `ukey.<slug>`: owns that card's gateway.

    Started by `GatewayHost` (in the web process by default, or by
    `manage.py ukey_gateway --device SLUG`); `manage.py runworker ukey.SLUG` works too.
    """

    gateway: CardGateway | None = None

    async def _ensure_gateway(self) -> CardGateway:
        if self.gateway is None:
            slug = self.scope["channel"][len(messages.CHANNEL_PREFIX) :]
            config = await device_config_load(slug)
            self.gateway = CardGateway(config, self.channel_layer, gateway_hooks())
            self.gateway.start()
            running_gateways[slug] = self.gateway
            logger.info("card %s: gateway started for %s", slug, config.url)
        return self.gateway

    async def ukey_start(self, message: dict[str, Any]) -> None:
        await self._ensure_gateway()

    async def ukey_request(self, message: dict[str, Any]) -> None:
        gateway = await self._ensure_gateway()
        await gateway.submit(message)

    async def ukey_shutdown(self, message: dict[str, Any]) -> None:
        if self.gateway is not None:
            await self.gateway.shutdown(float(message.get("grace", settings.UKEY_SHUTDOWN_GRACE)))
            running_gateways.pop(self.gateway.config.slug, None)
        raise StopConsumer()


class GatewayHost:
    """Runs gateway consumers for a set of devices inside the current event loop,
    feeding each from its channel, like Channels' worker does."""

    def __init__(self, slugs: list[str]) -> None:
        self.slugs = slugs
        self.layer = get_channel_layer()
        self._instances: dict[str, tuple[asyncio.Queue, asyncio.Task, asyncio.Task]] = {}

    async def start(self) -> None:
        app = UKeyGatewayConsumer.as_asgi()
        for slug in self.slugs:
            channel = messages.device_channel(slug)
            inbox: asyncio.Queue = asyncio.Queue()
            inbox.put_nowait({"type": messages.START})
            instance = asyncio.create_task(app({"type": "channel", "channel": channel}, inbox.get, self._no_send))
            listener = asyncio.create_task(self._listen(channel, inbox, instance))
            self._instances[slug] = (inbox, instance, listener)

    @staticmethod
    async def _no_send(message: dict[str, Any]) -> None:
        raise RuntimeError("a channel consumer has nobody to send to")

    async def _listen(self, channel: str, inbox: asyncio.Queue, instance: asyncio.Task) -> None:
        while not instance.done():
            try:
                message = await self.layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("channel layer receive on %s failed; retrying", channel)
                await asyncio.sleep(1)
                continue
            if message.get("type") == messages.REQUEST:
                inbox.put_nowait(message)

    async def wait(self) -> None:
        """Until every consumer has ended (or one failed)."""
        instances = [instance for _, instance, _ in self._instances.values()]
        if instances:
            done, _ = await asyncio.wait(instances, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception():
                    raise task.exception()

    async def stop(self, grace: float | None = None) -> None:
        grace = settings.UKEY_SHUTDOWN_GRACE if grace is None else grace
        # Drain first, while the consumers keep answering new requests ("shutting down").
        gateways = [running_gateways[slug] for slug in self._instances if slug in running_gateways]
        await asyncio.gather(*(gateway.shutdown(grace) for gateway in gateways), return_exceptions=True)
        for gateway in gateways:
            running_gateways.pop(gateway.config.slug, None)
        for inbox, _, listener in self._instances.values():
            listener.cancel()
            inbox.put_nowait({"type": messages.SHUTDOWN, "grace": grace})
        for _, instance, listener in self._instances.values():
            try:
                await asyncio.wait_for(asyncio.shield(instance), timeout=grace + 5)
            except asyncio.TimeoutError:
                instance.cancel()
            except Exception:
                logger.exception("gateway consumer ended with an error")
            # A channel layer's receive may not end at once on cancel; never wait for ever.
            await asyncio.wait([listener], timeout=2)
        self._instances.clear()
