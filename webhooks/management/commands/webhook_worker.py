import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import connections
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from signagent.system import stop_signals_install
from webhooks.models import Webhook


class Command(BaseCommand):
    help = gettext_lazy(
        "Send webhook notifications (card failures, the audit feed) in their own process. The web "
        "process already does this unless it runs with `runplatform --web-only`; with PostgreSQL any "
        "number of these may run together, with SQLite run only one."
    )

    def add_arguments(self, parser):
        parser.add_argument("--concurrency", type=int, default=None,
                            help=gettext_lazy("notifications in flight at once (default 16; at most 4 per webhook)"))

    def handle(self, *args, **options):
        enabled = Webhook.objects.filter(enabled=True).count()
        connections.close_all()  # the worker has its own database thread
        asyncio.run(self._run(options["concurrency"], enabled))

    async def _run(self, concurrency, enabled: int) -> None:
        from webhooks.worker import WebhookWorker

        worker = WebhookWorker(concurrency=concurrency)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        stop_signals_install(loop, stop.set)  # Windows too (no add_signal_handler there)
        await worker.start()
        self.stdout.write(_("Webhook delivery worker running (%(enabled)s enabled webhooks, %(attempts)s attempts "
                            "each); Ctrl-C stops it")
                          % {"enabled": enabled, "attempts": settings.WEBHOOK_MAX_ATTEMPTS})
        self.stdout.flush()
        waiter = asyncio.create_task(worker.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        self.stdout.write(_("stopping: finishing notifications in flight (up to 5 s)"))
        await worker.stop()
        waiter.cancel()
        stopper.cancel()
        self.stdout.write(_("Webhook delivery worker stopped"))
