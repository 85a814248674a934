"""`manage.py webhook_prune --older-than 30d`: remove finished webhook deliveries (delivered or
failed) created before then. Pending ones are never removed. The audit feed adds one delivery
per API request, so deployments that use it should run this regularly (e.g. daily from cron)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from core.durations import age_parse
from webhooks.models import WebhookDelivery


class Command(BaseCommand):
    help = gettext_lazy("Remove delivered and failed webhook deliveries older than the given age (pending ones stay).")

    def add_arguments(self, parser):
        parser.add_argument("--older-than", required=True, help=gettext_lazy("e.g. 30d (days), 4w (weeks), 12h (hours)"))
        parser.add_argument("--batch", type=int, default=5000, help=gettext_lazy("deliveries removed per query"))

    def handle(self, *args, **options):
        try:
            cutoff = timezone.now() - age_parse(options["older_than"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        finished = WebhookDelivery.objects.filter(
            created_at__lt=cutoff, status__in=(WebhookDelivery.DELIVERED, WebhookDelivery.FAILED)
        )
        removed = 0
        while True:
            ids = list(finished.values_list("pk", flat=True)[: options["batch"]])
            if not ids:
                break
            removed += WebhookDelivery.objects.filter(pk__in=ids).delete()[0]
            self.stdout.write(_("  %(count)s removed…") % {"count": removed})
        self.stdout.write(self.style.SUCCESS(
            _("Removed %(count)s finished webhook deliveries created before %(cutoff)s.")
            % {"count": removed, "cutoff": f"{cutoff:%Y-%m-%d %H:%M}"}
        ))
