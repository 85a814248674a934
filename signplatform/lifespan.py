"""ASGI lifespan: in the embedded mode the web process hosts the UKey gateway; every web
process but `runplatform --web-only` ones also runs the webhook and declaration workers.

On startup it makes sure the default card device exists and starts a gateway consumer
for every enabled device; on shutdown (after the server has stopped taking requests and
finished the ones in flight) it drains the card queues and closes the card connections."""

from __future__ import annotations

import asyncio
import logging

from channels.db import database_sync_to_async
from django.conf import settings

from api.nonces import redis_persistence_warnings
from core.sqlitewal import wal_checkpointer_for_default_database
from declarations.worker import DeclarationWorker
from declarations.worker import embedded_worker_wanted as declaration_worker_wanted
from signing.gateway_host import GatewayHost
from signing.models import CardDevice
from signing.services import card_device_sync_default
from webhooks.worker import WebhookWorker, embedded_worker_wanted

logger = logging.getLogger("signplatform.lifespan")


@database_sync_to_async
def _enabled_device_slugs() -> list[str]:
    card_device_sync_default()
    return list(CardDevice.objects.filter(enabled=True, transport=CardDevice.TRANSPORT_URL).values_list("slug", flat=True))


class LifespanGateway:
    def __init__(self, app) -> None:
        self.app = app
        self.host = None
        self.follower = None
        self.webhooks = None
        self.declarations = None
        self.checkpointer = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    logger.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        # With SQLite, its log is copied back by a thread of this process, not by a request.
        self.checkpointer = wal_checkpointer_for_default_database()
        if self.checkpointer is not None:
            self.checkpointer.start()
        if settings.NONCE_STORE == "redis":
            for warning in await asyncio.to_thread(redis_persistence_warnings):
                logger.warning(warning)
        if embedded_worker_wanted():  # not in `runplatform --web-only` processes
            self.webhooks = WebhookWorker()
            await self.webhooks.start()
        if declaration_worker_wanted():  # submissions to customs and their receipts
            self.declarations = DeclarationWorker()
            await self.declarations.start()
        if settings.UKEY_GATEWAY_MODE != "embedded":
            logger.info("UKey gateway runs in its own process(es) (UKEY_GATEWAY_MODE=%s)", settings.UKEY_GATEWAY_MODE)
            return
        slugs = await _enabled_device_slugs()
        self.host = GatewayHost(slugs)
        await self.host.start()
        # Cards added, edited or disabled in the admin take effect without a restart. Only
        # where this process is the only one (the in-memory layer): with Redis the cards
        # belong to the one `ukey_gateway --all` process, which follows them.
        if settings.UKEY_FOLLOW_DEVICES and "InMemoryChannelLayer" in settings.CHANNEL_LAYERS["default"]["BACKEND"]:
            self.follower = asyncio.create_task(self.host.follow_devices(), name="ukey-follow-devices")
        logger.info("UKey gateway started in this process for: %s", ", ".join(slugs) or "no devices")

    async def shutdown(self) -> None:
        if self.follower is not None:
            self.follower.cancel()
            self.follower = None
        if self.host is not None:
            await self.host.stop()
            self.host = None
        if self.declarations is not None:  # unsent declarations stay in the outbox for the next start
            await self.declarations.stop()
            self.declarations = None
        if self.webhooks is not None:  # undelivered notifications stay in the outbox for the next start
            await self.webhooks.stop()
            self.webhooks = None
        if self.checkpointer is not None:
            await asyncio.to_thread(self.checkpointer.stop)
            self.checkpointer = None
