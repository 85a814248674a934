import asyncio
import os
from pathlib import Path

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from core.eventloop import event_loop_run, thread_switch_interval_set
from signagent.system import stop_signals_install
from signing.gateway_host import GatewayHost
from signing.models import CardDevice
from signing.services import card_device_sync_default


class Command(BaseCommand):
    help = _("Run the UKey gateways in their own process (needs REDIS_URL): of one card device, or with "
             "--all of every card the platform dials, following the admin's changes.")

    def add_arguments(self, parser):
        which = parser.add_mutually_exclusive_group()
        which.add_argument("--device", default=settings.UKEY_DEFAULT_DEVICE, help=_("card device slug"))
        which.add_argument("--all", action="store_true",
                           help=_("every enabled card the platform dials; cards added or changed later too"))

    def handle(self, *args, **options):
        if "InMemoryChannelLayer" in settings.CHANNEL_LAYERS["default"]["BACKEND"]:
            raise CommandError(_(
                "a separate gateway process needs a shared channel layer: set REDIS_URL "
                "(without it the gateway runs inside the web process)"
            ))
        thread_switch_interval_set(settings.THREAD_SWITCH_INTERVAL_MS)
        if options["all"]:
            card_device_sync_default()
            event_loop_run(self._run_all())
            return
        slug = options["device"]
        if slug == settings.UKEY_DEFAULT_DEVICE:
            card_device_sync_default()
        device = CardDevice.objects.filter(slug=slug).first()
        if device is None:
            raise CommandError(_("no card device %(slug)s; create it in the admin first") % {"slug": repr(slug)})
        if not device.enabled:
            raise CommandError(_("card device %(slug)s is disabled") % {"slug": repr(slug)})
        if device.is_agent:
            raise CommandError(_("card device %(slug)s is served by its card agent (the web process it connects to)")
                               % {"slug": repr(slug)})
        event_loop_run(self._run(slug, device.url))

    async def _run_all(self) -> None:
        if not settings.UKEY_FOLLOW_DEVICES:  # the cards of now, until a restart
            slugs = await sync_to_async(list)(CardDevice.objects.filter(
                enabled=True, transport=CardDevice.TRANSPORT_URL).values_list("slug", flat=True))
            host = GatewayHost(slugs, link_path=_link_path())
            await host.start()
            await self._serve(host)
            return
        host = GatewayHost([], link_path=_link_path())
        await host.start()
        follower = asyncio.create_task(host.follow_devices())
        self.stdout.write(_("UKey gateways for every enabled card the platform dials (following changes); "
                            "Ctrl-C stops them"))
        await self._serve(host, extra=follower)

    async def _run(self, slug: str, url: str) -> None:
        host = GatewayHost([slug], link_path=_link_path())
        await host.start()
        self.stdout.write(_("UKey gateway for card %(slug)s (%(url)s) running; Ctrl-C stops it")
                          % {"slug": slug, "url": url})
        await self._serve(host)

    async def _serve(self, host: GatewayHost, extra: asyncio.Task | None = None) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        stop_signals_install(loop, stop.set)  # Windows too (no add_signal_handler there)
        self.stdout.flush()
        waiter = asyncio.create_task(host.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if waiter.done() and waiter.exception():
            raise CommandError(_("gateway failed: %(error)s") % {"error": waiter.exception()})
        self.stdout.write(_("stopping: finishing card operations in flight (up to %(seconds).0f s)")
                          % {"seconds": settings.UKEY_SHUTDOWN_GRACE})
        if extra is not None:
            extra.cancel()
        await host.stop()
        waiter.cancel()
        self.stdout.write(_("UKey gateway stopped"))


def _link_path() -> str:
    """This process's card-link socket (ukey/link.py) in the private var/ directory, or "" (off,
    or a path too long for a Unix socket)."""
    if not settings.UKEY_LINK:
        return ""
    path = str(Path(settings.VAR_DIR) / f"ukey-link-{os.getpid()}.sock")
    return path if len(path.encode()) < 100 else ""
