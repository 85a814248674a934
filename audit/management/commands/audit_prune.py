"""`manage.py audit_prune --older-than 180d`: remove old audit events, keeping the chain
verifiable from a recorded checkpoint."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from audit.chain import ChainBroken
from audit.services import audit_prune
from core.durations import age_parse


class Command(BaseCommand):
    help = gettext_lazy("Remove audit events older than the given age (the chain is verified first and stays "
                        "verifiable).")

    def add_arguments(self, parser):
        parser.add_argument("--older-than", required=True,
                            help=gettext_lazy("e.g. 180d (days), 26w (weeks), 12h (hours)"))

    def handle(self, *args, **options):
        try:
            age = age_parse(options["older_than"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(_("Verifying the chain, then removing events created more than %(age)s ago…")
                          % {"age": options["older_than"]})
        try:
            checkpoint = audit_prune(older_than=age)
        except ChainBroken as exc:
            raise CommandError(_("nothing was removed: the chain does not verify (%(reason)s); run audit_verify")
                               % {"reason": exc}) from None
        if checkpoint is None:
            self.stdout.write(_("Nothing to remove: no event is that old."))
            return
        self.stdout.write(self.style.SUCCESS(
            _("Removed events up to seq %(seq)s; checkpoint #%(checkpoint)s recorded (%(pruned)s events pruned in "
              "total). The rest of the chain still verifies.")
            % {"seq": checkpoint.seq, "checkpoint": checkpoint.pk, "pruned": checkpoint.pruned}
        ))
