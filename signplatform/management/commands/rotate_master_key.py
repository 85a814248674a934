import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from core.encryption import MasterKeyError, master_key, master_key_forget, master_key_generate, master_key_parse
from signplatform.master_key import master_key_rotate, master_key_rotation_summary


class Command(BaseCommand):
    help = _(
        "Re-encrypt every encrypted value (App Secrets, card PINs, legacy AES keys, webhook secrets) under a new "
        "master key, in one transaction. "
        "Restart every platform process afterwards."
    )

    def add_arguments(self, parser):
        source = parser.add_mutually_exclusive_group()
        source.add_argument("--generate", action="store_true", help=_("generate a new random key (the default)"))
        source.add_argument(
            "--new-key-env",
            metavar="VAR",
            help=_("read the new key (32 bytes, base64url or hex) from this environment variable, "
                   "so it never appears in the shell history"),
        )

    def handle(self, *args, **options):
        if options["new_key_env"]:
            text = os.environ.get(options["new_key_env"], "")
            if not text:
                raise CommandError(_("environment variable %(var)s is empty") % {"var": options["new_key_env"]})
            try:
                new_key = master_key_parse(text)
            except MasterKeyError as exc:
                raise CommandError(str(exc)) from None
            generated = None
        else:
            generated = master_key_generate()
            new_key = master_key_parse(generated)
        try:
            old_key = master_key()
        except (MasterKeyError, OSError) as exc:
            raise CommandError(_("the current master key cannot be read: %(error)s") % {"error": exc}) from None
        if new_key == old_key:
            raise CommandError(_("the new key is the current key"))

        key_file = None if settings.SIGNPLATFORM_MASTER_KEY else Path(settings.SIGNPLATFORM_MASTER_KEY_FILE)
        staged = None
        if key_file is not None:
            # The new key is on disk before the database changes, so it cannot be lost.
            staged = key_file.with_name(key_file.name + ".new")
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write((generated or text.strip()) + "\n")
        try:
            counts = master_key_rotate(old_key=old_key, new_key=new_key)
        except MasterKeyError as exc:
            if staged:
                staged.unlink(missing_ok=True)
            raise CommandError(_("nothing was changed: %(error)s") % {"error": exc}) from None
        master_key_forget()
        self.stdout.write(_("Re-encrypted %(values)s under the new key.")
                          % {"values": master_key_rotation_summary(counts)})
        if key_file is not None:
            backup = key_file.with_name(key_file.name + ".previous")
            os.replace(key_file, backup)
            os.replace(staged, key_file)
            master_key_forget()
            self.stdout.write(_("New key written to %(path)s (the old one is kept in %(backup)s; delete it when "
                                "every process has restarted).") % {"path": key_file, "backup": backup})
        elif generated:
            self.stdout.write(_("Set SIGNPLATFORM_MASTER_KEY to this new key (shown only now):") + "\n" + generated)
        else:
            self.stdout.write(_("Set SIGNPLATFORM_MASTER_KEY to the value of %(var)s.")
                              % {"var": options["new_key_env"]})
        self.stdout.write(_("Restart every platform process (web, gateways) so they use the new key."))
