import json
import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from signplatform.backup import BackupError, backup_create, backup_open, backup_restore


class Command(BaseCommand):
    help = _(
        "Back up the database and the keys it needs (master key, audit chain key) into one file, and restore "
        "it. The file contains the keys: keep it like them (mode 0600; encrypt it with --passphrase-env)."
    )

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", help=_("write a backup file"))
        create.add_argument("file", type=Path)
        create.add_argument("--overwrite", action="store_true", help=_("replace an existing file"))
        restore = actions.add_parser("restore", help=_("restore a backup file into this installation"))
        restore.add_argument("file", type=Path)
        restore.add_argument("--replace", action="store_true",
                             help=_("replace everything in a database that already holds data"))
        show = actions.add_parser("show", help=_("what a backup holds (no keys)"))
        show.add_argument("file", type=Path)
        keys = actions.add_parser("keys", help=_("print a backup's keys, to set SIGNPLATFORM_MASTER_KEY and "
                                                 "AUDIT_CHAIN_KEY from them"))
        keys.add_argument("file", type=Path)
        for sub in (create, restore, show, keys):
            secret = sub.add_mutually_exclusive_group()
            secret.add_argument("--passphrase-env", metavar="VAR",
                                help=_("the passphrase is in this environment variable (encrypts a new backup)"))
            secret.add_argument("--passphrase-file", metavar="PATH", type=Path,
                                help=_("the passphrase is the first line of this file"))

    def handle(self, *args, **options):
        passphrase = _passphrase(options)
        try:
            getattr(self, "_" + options["action"])(options["file"], passphrase, options)
        except BackupError as exc:
            raise CommandError(str(exc)) from None

    def _create(self, path: Path, passphrase: str | None, options) -> None:
        summary = backup_create(path=path, passphrase=passphrase, overwrite=options["overwrite"])
        self.stdout.write(_("Backup written to %(path)s: %(rows)d rows, the master key and the audit chain key "
                            "(sha256 %(sha)s).") % {"path": summary.path, "rows": summary.rows, "sha": summary.sha256})
        if summary.encrypted:
            self.stdout.write(_("Encrypted with the passphrase: keep the passphrase apart from the file."))
        else:
            self.stdout.write(_("Not encrypted: it holds the keys in clear (mode 0600). Keep it like the keys, or "
                                "use --passphrase-env."))

    def _restore(self, path: Path, passphrase: str | None, options) -> None:
        summary = backup_restore(path=path, passphrase=passphrase, replace=options["replace"])
        self.stdout.write(_("Restored %(rows)d rows of the backup of %(when)s.") % {"rows": summary.rows,
                                                                                   "when": summary.created_at})
        for key_path in summary.keys_written:
            self.stdout.write(_("Key written: %(path)s") % {"path": key_path})
        for warning in summary.warnings:
            self.stderr.write(warning)
        self.stdout.write(_("Run `manage.py audit_verify`, then (re)start every platform process."))

    def _show(self, path: Path, passphrase: str | None, options) -> None:
        with backup_open(path, passphrase=passphrase) as backup:
            self.stdout.write(json.dumps(backup.manifest, indent=1))

    def _keys(self, path: Path, passphrase: str | None, options) -> None:
        with backup_open(path, passphrase=passphrase) as backup:
            self.stdout.write(f"SIGNPLATFORM_MASTER_KEY={backup.keys['master_key']}")
            self.stdout.write(f"AUDIT_CHAIN_KEY={backup.keys['audit_chain_key']}")
            if backup.keys.get("django_secret_key"):
                self.stdout.write(f"DJANGO_SECRET_KEY={backup.keys['django_secret_key']}")


def _passphrase(options) -> str | None:
    if options.get("passphrase_env"):
        value = os.environ.get(options["passphrase_env"], "")
        if not value:
            raise CommandError(_("environment variable %(var)s is empty") % {"var": options["passphrase_env"]})
        return value
    if options.get("passphrase_file"):
        try:
            value = next(iter(options["passphrase_file"].read_text().splitlines()), "")
        except OSError as exc:
            raise CommandError(str(exc)) from None
        if not value:
            raise CommandError(_("%(path)s holds no passphrase") % {"path": options["passphrase_file"]})
        return value
    return None
