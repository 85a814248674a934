"""`manage.py audit_prune --older-than 180d`: remove old audit events, keeping the chain
verifiable from a recorded checkpoint."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audit.chain import ChainBroken
from audit.services import audit_prune
from core.durations import age_parse


class Command(BaseCommand):
    help = "Remove audit events older than the given age (the chain is verified first and stays verifiable)."

    def add_arguments(self, parser):
        parser.add_argument("--older-than", required=True, help="e.g. 180d (days), 26w (weeks), 12h (hours)")

    def handle(self, *args, **options):
        try:
            age = age_parse(options["older_than"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Verifying the chain, then removing events created more than {options['older_than']} ago…")
        try:
            checkpoint = audit_prune(older_than=age)
        except ChainBroken as exc:
            raise CommandError(f"nothing was removed: the chain does not verify ({exc}); run audit_verify") from None
        if checkpoint is None:
            self.stdout.write("Nothing to remove: no event is that old.")
            return
        self.stdout.write(self.style.SUCCESS(
            f"Removed events up to seq {checkpoint.seq}; checkpoint #{checkpoint.pk} recorded "
            f"({checkpoint.pruned} events pruned in total). The rest of the chain still verifies."
        ))
