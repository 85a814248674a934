from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.utils.translation import gettext as _

from core.encryption import master_key_file_ensure


class Command(BaseCommand):
    help = _(
        "Get a database and var/ ready for the platform's processes: migrate, create the key files that are not "
        "given by the environment, and make sure an administrator exists (ensure_admin). Run it once before the "
        "processes start (the `migrate` service of docker-compose.yml, ExecStartPre of the systemd units); "
        "`make run` does it through `runplatform --prepare`."
    )

    def handle(self, *args, **options):
        call_command("migrate", interactive=False, verbosity=0)
        # Every process of a deployment must read the same keys: created here, once, before
        # several processes could race to create them.
        key_file = master_key_file_ensure()
        if key_file:
            self.stdout.write(_("Master key: %(path)s (set SIGNPLATFORM_MASTER_KEY to use your own)")
                              % {"path": key_file})
        call_command("ensure_admin", stdout=self.stdout, stderr=self.stderr)
