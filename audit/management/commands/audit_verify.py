"""`manage.py audit_verify`: walk the audit hash chain; exit 1 naming the first event that
does not verify."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from audit.chain import chain_verify
from audit.models import AuditCheckpoint


class Command(BaseCommand):
    help = gettext_lazy("Verify the audit log's hash chain (edited, deleted or reordered events are named).")

    def add_arguments(self, parser):
        parser.add_argument("--batch", type=int, default=5000,
                            help=gettext_lazy("events read per query (default 5000)"))

    def handle(self, *args, **options):
        started = time.monotonic()
        checkpoint = AuditCheckpoint.objects.order_by("-seq").first()
        if checkpoint:
            self.stdout.write(_("Starting after checkpoint #%(checkpoint)s: %(pruned)s older events were pruned up to "
                                "seq %(seq)s.")
                              % {"checkpoint": checkpoint.pk, "pruned": checkpoint.pruned, "seq": checkpoint.seq})
        report = chain_verify(batch=options["batch"],
                              progress=lambda n: self.stdout.write(_("  %(count)s events verified…") % {"count": n}))
        elapsed = time.monotonic() - started
        if report.ok:
            self.stdout.write(self.style.SUCCESS(
                _("OK: %(count)s events verified (seq %(first)s–%(last)s) in %(seconds)ss.")
                % {"count": report.checked, "first": report.start_seq, "last": report.last_seq,
                   "seconds": f"{elapsed:.1f}"}
            ))
            return
        event = report.event
        if event is None:
            raise CommandError(_("audit chain broken after %(count)s good events: %(reason)s")
                               % {"count": report.checked, "reason": report.reason})
        raise CommandError(
            _("audit chain broken at event id %(id)s (seq %(seq)s, %(created)s, %(type)s, request id %(request)s): "
              "%(reason)s. %(count)s events before it verified.")
            % {"id": event.pk, "seq": event.seq, "created": f"{event.created_at:%Y-%m-%d %H:%M:%S%z}",
               "type": event.event_type, "request": event.request_id or "-", "reason": report.reason,
               "count": report.checked}
        )
