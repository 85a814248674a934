import asyncio
import signal

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import connections
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from declarations.models import Submission


class Command(BaseCommand):
    help = gettext_lazy(
        "Submit declarations to the customs exchange server and poll their receipts, in a process of its own. "
        "The web process already does this unless it runs with `runplatform --web-only` or "
        "DECLARATION_WORKER_EMBEDDED=false; with PostgreSQL several may run together, with SQLite run only one."
    )

    def add_arguments(self, parser):
        parser.add_argument("--concurrency", type=int, default=None,
                            help=_("submissions in flight at once (default DECLARATION_SUBMIT_CONCURRENCY)"))

    def handle(self, *args, **options):
        pending = Submission.objects.filter(status=Submission.PENDING).count()
        connections.close_all()  # the worker has its own database thread
        asyncio.run(self._run(options["concurrency"], pending))

    async def _run(self, concurrency, pending: int) -> None:
        from declarations.worker import DeclarationWorker

        worker = DeclarationWorker(concurrency=concurrency)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await worker.start()
        server = settings.CUSTOMS_CEB_SERVER or _("(none set: CUSTOMS_CEB_SERVER)")
        self.stdout.write(ngettext(
            "Declaration worker running (%(pending)d submission pending; default exchange server %(server)s); "
            "Ctrl-C stops it",
            "Declaration worker running (%(pending)d submissions pending; default exchange server %(server)s); "
            "Ctrl-C stops it", pending) % {"pending": pending, "server": server})
        self.stdout.flush()
        waiter = asyncio.create_task(worker.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        self.stdout.write(_("stopping: finishing submissions in flight (up to 5 s)"))
        await worker.stop()
        waiter.cancel()
        stopper.cancel()
        self.stdout.write(_("Declaration worker stopped"))
