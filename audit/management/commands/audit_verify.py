"""`manage.py audit_verify`: walk the audit hash chain; exit 1 naming the first event that
does not verify."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError

from audit.chain import chain_verify
from audit.models import AuditCheckpoint


class Command(BaseCommand):
    help = "Verify the audit log's hash chain (edited, deleted or reordered events are named)."

    def add_arguments(self, parser):
        parser.add_argument("--batch", type=int, default=5000, help="events read per query (default 5000)")

    def handle(self, *args, **options):
        started = time.monotonic()
        checkpoint = AuditCheckpoint.objects.order_by("-seq").first()
        if checkpoint:
            self.stdout.write(f"Starting after checkpoint #{checkpoint.pk}: {checkpoint.pruned} older events were "
                              f"pruned up to seq {checkpoint.seq}.")
        report = chain_verify(batch=options["batch"],
                              progress=lambda n: self.stdout.write(f"  {n} events verified…"))
        elapsed = time.monotonic() - started
        if report.ok:
            self.stdout.write(self.style.SUCCESS(
                f"OK: {report.checked} events verified (seq {report.start_seq}–{report.last_seq}) in {elapsed:.1f}s."
            ))
            return
        event = report.event
        if event is None:
            raise CommandError(f"audit chain broken after {report.checked} good events: {report.reason}")
        raise CommandError(
            f"audit chain broken at event id {event.pk} (seq {event.seq}, {event.created_at:%Y-%m-%d %H:%M:%S%z}, "
            f"{event.event_type}, request id {event.request_id or '-'}): {report.reason}. "
            f"{report.checked} events before it verified."
        )
