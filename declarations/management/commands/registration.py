"""`manage.py registration`: company registrations (BaseTransfer of declarations) from the
command line: set one for an access ID or a card pool, show, list, delete."""

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from accessids.models import AccessId
from declarations.models import Registration
from declarations.services import REGISTRATION_FIELDS, registration_delete, registration_set
from signing.models import CardPool

OPTIONS = {  # option -> (registration field, help)
    "cop_code": ("--cop-code", "copCode: the transmitting enterprise's customs code (at most 18 characters)"),
    "cop_name": ("--cop-name", "copName: its name (at most 100 characters)"),
    "dxp_id": ("--dxp-id", "dxpId: its data-exchange user number, e.g. DXPENT0000012345"),
    "ebp_code": ("--ebp-code", "ebpCode used when a document leaves it out"),
    "ebp_name": ("--ebp-name", "ebpName used when a document leaves it out"),
    "ebc_code": ("--ebc-code", "ebcCode used when a document leaves it out"),
    "ebc_name": ("--ebc-name", "ebcName used when a document leaves it out"),
    "server_url": ("--server", "the customs exchange server, http(s)://host:port (empty: CUSTOMS_CEB_SERVER)"),
}


def _describe(registration: Registration) -> dict:
    return {"owner": registration.owner_label, **{name: getattr(registration, name) for name in REGISTRATION_FIELDS},
            "updated_at": registration.updated_at.isoformat()}


class Command(BaseCommand):
    help = ("Company registrations: who transmits declarations (BaseTransfer copCode, copName, dxpId), the defaults "
            "of their documents and the exchange server, for an access ID that signs with one card or for a card "
            "pool (whose access IDs then share it).")

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        setter = sub.add_parser("set", help="create or change a registration (options left out keep their value)")
        self._owner(setter)
        for name, (flag, text) in OPTIONS.items():
            setter.add_argument(flag, dest=name, default=None, help=text)
        setter.add_argument("--json", action="store_true", help="print the registration as JSON")
        show = sub.add_parser("show", help="show the registration of an access ID or a pool")
        self._owner(show)
        show.add_argument("--json", action="store_true")
        listing = sub.add_parser("list", help="list every registration")
        listing.add_argument("--json", action="store_true")
        delete = sub.add_parser("delete", help="delete a registration (declarations keep what they were built with)")
        self._owner(delete)

    @staticmethod
    def _owner(parser):
        owner = parser.add_mutually_exclusive_group(required=True)
        owner.add_argument("--access-id", help="the access ID (AK...) it is for: declarations it signs with one card")
        owner.add_argument("--pool", help="the card pool (slug) it is for: declarations signed by the pool")

    def handle(self, *args, **options):
        return getattr(self, "_" + options["action"])(options)

    def _owner_objects(self, options) -> dict:
        if options.get("access_id"):
            access = AccessId.objects.filter(key=options["access_id"].strip()).first()
            if access is None:
                raise CommandError(f"no access ID {options['access_id']!r}")
            return {"access_id": access}
        pool = CardPool.objects.filter(slug=options["pool"].strip()).first()
        if pool is None:
            raise CommandError(f"no card pool {options['pool']!r}")
        return {"pool": pool}

    def _find(self, options) -> Registration:
        owner = self._owner_objects(options)
        registration = Registration.objects.filter(**owner).first()
        if registration is None:
            raise CommandError(f"no registration for {next(iter(owner.values()))}")
        return registration

    def _set(self, options):
        owner = self._owner_objects(options)
        values = {name: options[name] for name in OPTIONS if options[name] is not None}
        try:
            registration, created, changed = registration_set(**owner, **values)
        except ValidationError as exc:
            problems = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in exc.message_dict.items()) \
                if hasattr(exc, "error_dict") else " ".join(exc.messages)
            raise CommandError(problems) from None
        if options["json"]:
            self.stdout.write(json.dumps({**_describe(registration), "created": created, "changed": changed},
                                         ensure_ascii=False))
            return
        if created:
            self.stdout.write(f"registration created for {registration.owner_label}")
        elif changed:
            self.stdout.write(f"registration of {registration.owner_label} changed: {', '.join(changed)}")
        else:
            self.stdout.write(f"registration of {registration.owner_label} unchanged")
        self._print(registration)
        access = owner.get("access_id")
        if access is not None and access.pools.exists():
            self.stdout.write(f"note: {access.key} uses card pools ({', '.join(access.pools.values_list('slug', flat=True))}); "
                              "its declarations signed through a pool use that pool's registration")

    def _show(self, options):
        registration = self._find(options)
        if options["json"]:
            self.stdout.write(json.dumps(_describe(registration), ensure_ascii=False))
        else:
            self._print(registration)

    def _list(self, options):
        rows = [_describe(r) for r in Registration.objects.select_related("access_id", "pool").order_by("pk")]
        if options["json"]:
            self.stdout.write(json.dumps(rows, ensure_ascii=False))
            return
        if not rows:
            self.stdout.write("no registrations: manage.py registration set --access-id AK... --cop-code C "
                              "--cop-name N --dxp-id D")
            return
        self.stdout.write(f"{'OWNER':<36} {'COPCODE':<19} {'DXPID':<22} {'SERVER':<30} COPNAME")
        for row in rows:
            self.stdout.write(f"{row['owner']:<36} {row['cop_code']:<19} {row['dxp_id']:<22} "
                              f"{row['server_url'] or '(CUSTOMS_CEB_SERVER)':<30} {row['cop_name']}")

    def _delete(self, options):
        registration = self._find(options)
        label = registration.owner_label
        registration_delete(registration=registration)
        self.stdout.write(f"registration of {label} deleted")

    def _print(self, registration: Registration) -> None:
        labels = {"cop_code": "copCode", "cop_name": "copName", "dxp_id": "dxpId", "ebp_code": "ebpCode default",
                  "ebp_name": "ebpName default", "ebc_code": "ebcCode default", "ebc_name": "ebcName default",
                  "server_url": "exchange server"}
        self.stdout.write(f"  {'owner':<16} {registration.owner_label}")
        for name in REGISTRATION_FIELDS:
            value = getattr(registration, name)
            if name == "server_url" and not value:
                value = "(CUSTOMS_CEB_SERVER)"
            self.stdout.write(f"  {labels[name]:<16} {value or '-'}")
