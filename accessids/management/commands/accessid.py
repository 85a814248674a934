import json

from django.core.management.base import BaseCommand, CommandError

from accessids.models import AccessId, AppSecret
from accessids.services import (
    AccessIdError,
    access_id_create,
    access_id_set_enabled,
    app_secret_rotate,
    grace_parse,
    scopes_parse,
)


class Command(BaseCommand):
    help = "Manage access IDs: create, list, rotate, disable, enable."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="create an access ID and print its secret once")
        create.add_argument("--name", required=True)
        create.add_argument("--scopes", help="comma-separated; all scopes when omitted")
        create.add_argument("--description", default="")
        create.add_argument("--json", action="store_true", help='print only {"access_id": ..., "secret": ...}')
        sub.add_parser("list", help="list access IDs")
        rotate = sub.add_parser("rotate", help="issue a new secret; the old one stays valid for the grace period")
        rotate.add_argument("access_id")
        rotate.add_argument("--grace", default="24h", help="0, 1h, 24h (default) or 7d")
        rotate.add_argument("--json", action="store_true")
        for action in ("disable", "enable"):
            sub.add_parser(action).add_argument("access_id")

    def handle(self, *args, **options):
        try:
            getattr(self, f"_{options['action']}")(options)
        except AccessIdError as exc:
            raise CommandError(str(exc)) from None

    def _get(self, key: str) -> AccessId:
        access = AccessId.objects.filter(key=key).first()
        if access is None:
            raise CommandError(f"no access ID {key!r}")
        return access

    def _create(self, options):
        access, secret = access_id_create(
            name=options["name"], scopes=scopes_parse(options["scopes"]), description=options["description"]
        )
        if options["json"]:
            self.stdout.write(json.dumps({"access_id": access.key, "secret": secret}))
            return
        self.stdout.write(
            f"Created access ID {access.key} ({access.name}), scopes {', '.join(access.scopes)}\n"
            f"App Secret (shown only now, store it safely):\n{secret}"
        )

    def _list(self, options):
        rows = AccessId.objects.prefetch_related("secrets").order_by("name")
        if not rows:
            self.stdout.write("No access IDs yet: python manage.py accessid create --name NAME")
            return
        self.stdout.write(f"{'ACCESS ID':<24} {'STATUS':<9} {'SECRET':<14} {'LAST USED':<20} NAME / SCOPES")
        for access in rows:
            current = next((s for s in access.secrets.all() if s.state == AppSecret.CURRENT), None)
            status = access.status
            used = access.last_used_at.strftime("%Y-%m-%d %H:%M:%S") if access.last_used_at else "never"
            self.stdout.write(
                f"{access.key:<24} {status:<9} {current.fingerprint if current else '-':<14} {used:<20} "
                f"{access.name} [{','.join(access.scopes)}]"
            )

    def _rotate(self, options):
        access = self._get(options["access_id"])
        grace = grace_parse(options["grace"])
        row, secret = app_secret_rotate(access_id=access, grace=grace)
        if options["json"]:
            self.stdout.write(json.dumps({"access_id": access.key, "secret": secret, "secret_version": row.version}))
            return
        previous = f"stays valid for {options['grace']}" if grace.total_seconds() > 0 else "is revoked now"
        self.stdout.write(
            f"Rotated {access.key}: new secret version {row.version} (fingerprint {row.fingerprint}); "
            f"the previous secret {previous}.\nNew App Secret (shown only now):\n{secret}"
        )

    def _disable(self, options):
        access = access_id_set_enabled(access_id=self._get(options["access_id"]), enabled=False)
        self.stdout.write(f"Disabled {access.key}: its requests are refused from now on")

    def _enable(self, options):
        access = access_id_set_enabled(access_id=self._get(options["access_id"]), enabled=True)
        self.stdout.write(f"Enabled {access.key}")
