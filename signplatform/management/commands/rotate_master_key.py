import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from core.encryption import MasterKeyError, master_key, master_key_forget, master_key_generate, master_key_parse
from signplatform.master_key import master_key_rotate, master_key_rotation_summary


class Command(BaseCommand):
    help = (
        "Re-encrypt every encrypted value (App Secrets, card PINs, legacy AES keys, webhook secrets) under a new "
        "master key, in one transaction. "
        "Restart every platform process afterwards."
    )

    def add_arguments(self, parser):
        source = parser.add_mutually_exclusive_group()
        source.add_argument("--generate", action="store_true", help="generate a new random key (the default)")
        source.add_argument(
            "--new-key-env",
            metavar="VAR",
            help="read the new key (32 bytes, base64url or hex) from this environment variable, "
            "so it never appears in the shell history",
        )

    def handle(self, *args, **options):
        if options["new_key_env"]:
            text = os.environ.get(options["new_key_env"], "")
            if not text:
                raise CommandError(f"environment variable {options['new_key_env']} is empty")
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
            raise CommandError(f"the current master key cannot be read: {exc}") from None
        if new_key == old_key:
            raise CommandError("the new key is the current key")

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
            raise CommandError(f"nothing was changed: {exc}") from None
        master_key_forget()
        self.stdout.write(f"Re-encrypted {master_key_rotation_summary(counts)} under the new key.")
        if key_file is not None:
            backup = key_file.with_name(key_file.name + ".previous")
            os.replace(key_file, backup)
            os.replace(staged, key_file)
            master_key_forget()
            self.stdout.write(f"New key written to {key_file} (the old one is kept in {backup}; delete it when "
                              "every process has restarted).")
        elif generated:
            self.stdout.write("Set SIGNPLATFORM_MASTER_KEY to this new key (shown only now):\n" + generated)
        else:
            self.stdout.write(f"Set SIGNPLATFORM_MASTER_KEY to the value of {options['new_key_env']}.")
        self.stdout.write("Restart every platform process (web, gateways) so they use the new key.")
