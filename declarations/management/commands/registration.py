"""`manage.py registration`: company registrations (BaseTransfer of declarations) from the
command line: set one for an access ID or a card pool, show, list, delete."""

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from accessids.models import AccessId
from declarations.models import Registration
from declarations.services import REGISTRATION_FIELDS, registration_delete, registration_set
from signing.models import CardPool

OPTIONS = {  # option -> (registration field, help)
    "cop_code": ("--cop-code", gettext_lazy("copCode: the transmitting enterprise's customs code (at most 18 characters)")),
    "cop_name": ("--cop-name", gettext_lazy("copName: its name (at most 100 characters)")),
    "dxp_id": ("--dxp-id", gettext_lazy("dxpId: its data-exchange user number, e.g. DXPENT0000012345")),
    "ebp_code": ("--ebp-code", gettext_lazy("ebpCode used when a document leaves it out")),
    "ebp_name": ("--ebp-name", gettext_lazy("ebpName used when a document leaves it out")),
    "ebc_code": ("--ebc-code", gettext_lazy("ebcCode used when a document leaves it out")),
    "ebc_name": ("--ebc-name", gettext_lazy("ebcName used when a document leaves it out")),
    "server_url": ("--server", gettext_lazy("the customs exchange server, http(s)://host:port (empty: "
                                            "CUSTOMS_CEB_SERVER)")),
}


def _describe(registration: Registration) -> dict:
    return {"owner": registration.owner_label, **{name: getattr(registration, name) for name in REGISTRATION_FIELDS},
            "updated_at": registration.updated_at.isoformat()}


class Command(BaseCommand):
    help = gettext_lazy(
        "Company registrations: who transmits declarations (BaseTransfer copCode, copName, dxpId), the defaults of "
        "their documents and the exchange server, for an access ID that signs with one card or for a card pool "
        "(whose access IDs then share it).")

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        setter = sub.add_parser("set", help=_("create or change a registration (options left out keep their value)"))
        self._owner(setter)
        for name, (flag, text) in OPTIONS.items():
            setter.add_argument(flag, dest=name, default=None, help=text)
        setter.add_argument("--json", action="store_true", help=_("print the registration as JSON"))
        show = sub.add_parser("show", help=_("show the registration of an access ID or a pool"))
        self._owner(show)
        show.add_argument("--json", action="store_true")
        listing = sub.add_parser("list", help=_("list every registration"))
        listing.add_argument("--json", action="store_true")
        delete = sub.add_parser("delete", help=_("delete a registration (declarations keep what they were built with)"))
        self._owner(delete)

    @staticmethod
    def _owner(parser):
        owner = parser.add_mutually_exclusive_group(required=True)
        owner.add_argument("--access-id", help=_("the access ID (AK...) it is for: declarations it signs with one card"))
        owner.add_argument("--pool", help=_("the card pool (slug) it is for: declarations signed by the pool"))

    def handle(self, *args, **options):
        return getattr(self, "_" + options["action"])(options)

    def _owner_objects(self, options) -> dict:
        if options.get("access_id"):
            access = AccessId.objects.filter(key=options["access_id"].strip()).first()
            if access is None:
                raise CommandError(_("no access ID %(key)s") % {"key": repr(options["access_id"])})
            return {"access_id": access}
        pool = CardPool.objects.filter(slug=options["pool"].strip()).first()
        if pool is None:
            raise CommandError(_("no card pool %(slug)s") % {"slug": repr(options["pool"])})
        return {"pool": pool}

    def _find(self, options) -> Registration:
        owner = self._owner_objects(options)
        registration = Registration.objects.filter(**owner).first()
        if registration is None:
            raise CommandError(_("no registration for %(owner)s") % {"owner": next(iter(owner.values()))})
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
        label = registration.owner_text
        if created:
            self.stdout.write(_("registration created for %(owner)s") % {"owner": label})
        elif changed:
            self.stdout.write(_("registration of %(owner)s changed: %(fields)s") % {"owner": label,
                                                                                   "fields": ", ".join(changed)})
        else:
            self.stdout.write(_("registration of %(owner)s unchanged") % {"owner": label})
        self._print(registration)
        access = owner.get("access_id")
        if access is not None and access.pools.exists():
            pools = ", ".join(access.pools.values_list("slug", flat=True))
            self.stdout.write(_("note: %(key)s uses card pools (%(pools)s); its declarations signed through a pool "
                                "use that pool's registration") % {"key": access.key, "pools": pools})

    def _show(self, options):
        registration = self._find(options)
        if options["json"]:
            self.stdout.write(json.dumps(_describe(registration), ensure_ascii=False))
        else:
            self._print(registration)

    def _list(self, options):
        registrations = list(Registration.objects.select_related("access_id", "pool").order_by("pk"))
        if options["json"]:
            self.stdout.write(json.dumps([_describe(r) for r in registrations], ensure_ascii=False))
            return
        if not registrations:
            self.stdout.write(_("no registrations: manage.py registration set --access-id AK... --cop-code C "
                                "--cop-name N --dxp-id D"))
            return
        self.stdout.write(f"{'OWNER':<36} {'COPCODE':<19} {'DXPID':<22} {'SERVER':<30} COPNAME")
        for r in registrations:
            self.stdout.write(f"{r.owner_text:<36} {r.cop_code:<19} {r.dxp_id:<22} "
                              f"{r.server_url or '(CUSTOMS_CEB_SERVER)':<30} {r.cop_name}")

    def _delete(self, options):
        registration = self._find(options)
        label = registration.owner_text
        registration_delete(registration=registration)
        self.stdout.write(_("registration of %(owner)s deleted") % {"owner": label})

    def _print(self, registration: Registration) -> None:
        owner = _("owner")
        self.stdout.write(f"  {owner:<16} {registration.owner_text}")
        for name in REGISTRATION_FIELDS:
            label = str(Registration._meta.get_field(name).verbose_name)  # copCode, ..., exchange server
            value = getattr(registration, name)
            if name == "server_url" and not value:
                value = "(CUSTOMS_CEB_SERVER)"
            self.stdout.write(f"  {label:<16} {value or '-'}")
