"""`manage.py translations_compile`: build each locale/<language>/LC_MESSAGES/django.mo from its
django.po with polib (pure Python, so neither `make run` nor a Windows PC needs GNU gettext).
A .mo newer than its .po is left alone. `make run` and `make test` run it; the .mo files are
build output (not committed)."""

from __future__ import annotations

from pathlib import Path

import polib
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _


class Command(BaseCommand):
    help = _("Compile the translations (locale/*/LC_MESSAGES/django.po) into .mo files.")

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help=_("rebuild every .mo, even an up-to-date one"))

    def handle(self, *args, force=False, **options):
        compiled = 0
        for folder in settings.LOCALE_PATHS:
            for po_path in sorted(Path(folder).glob("*/LC_MESSAGES/*.po")):
                mo_path = po_path.with_suffix(".mo")
                if not force and mo_path.exists() and mo_path.stat().st_mtime >= po_path.stat().st_mtime:
                    continue
                try:
                    catalogue = polib.pofile(str(po_path))
                except (OSError, ValueError) as exc:
                    raise CommandError(_("cannot read %(path)s: %(error)s") % {"path": po_path, "error": exc}) from exc
                catalogue.save_as_mofile(str(mo_path))
                compiled += 1
                if options["verbosity"] >= 1:
                    self.stdout.write(_("compiled %(path)s (%(count)d messages, %(percent)d%% translated)") % {
                        "path": mo_path, "count": len(catalogue), "percent": catalogue.percent_translated()})
        if compiled == 0 and options["verbosity"] >= 2:
            self.stdout.write(_("the translations are up to date"))
