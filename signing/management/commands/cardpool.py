"""`manage.py cardpool`: card pools from the command line."""

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _
from django.utils.translation import ngettext, pgettext

from signing.models import CardDevice, CardPool
from signing.pools import pool_cards, pool_read
from signing.services import card_pool_create


class Command(BaseCommand):
    help = _("Manage card pools: create one from card devices, list them with their capacity.")

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help=_("group card devices in a pool"))
        create.add_argument("--slug", required=True)
        create.add_argument("--name", default="")
        create.add_argument("--devices", required=True, help=_("the cards' slugs, comma separated"))
        create.add_argument("--enterprise", default="",
                            help=_("the enterprise every card's certificate must name (default: the cards')"))
        listing = sub.add_parser("list", help=_("list pools and how many of their cards are up"))
        listing.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        return getattr(self, "_" + options["action"])(options)

    def _create(self, options):
        slugs = [s.strip() for s in options["devices"].split(",") if s.strip()]
        devices = list(CardDevice.objects.filter(slug__in=slugs))
        missing = sorted(set(slugs) - {d.slug for d in devices})
        if missing:
            raise CommandError(_("no card device %(slug)s") % {"slug": ", ".join(missing)})
        if CardPool.objects.filter(slug=options["slug"]).exists():
            raise CommandError(_("card pool %(slug)s exists already") % {"slug": repr(options["slug"])})
        try:
            pool = card_pool_create(slug=options["slug"], name=options["name"], devices=devices,
                                    enterprise=options["enterprise"])
        except ValidationError as exc:
            problems = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in exc.message_dict.items())
            raise CommandError(problems) from None
        names = {"slug": pool.slug, "count": len(devices), "cards": ", ".join(sorted(slugs)),
                 "enterprise": pool.enterprise}
        if pool.enterprise:
            created = ngettext("card pool %(slug)s created with %(count)d card(s): %(cards)s; enterprise "
                               "%(enterprise)s",
                               "card pool %(slug)s created with %(count)d card(s): %(cards)s; enterprise "
                               "%(enterprise)s", len(devices)) % names
        else:
            created = ngettext("card pool %(slug)s created with %(count)d card(s): %(cards)s; its enterprise is taken "
                               "from the cards once connected",
                               "card pool %(slug)s created with %(count)d card(s): %(cards)s; its enterprise is taken "
                               "from the cards once connected", len(devices)) % names
        self.stdout.write(created + "\n" + _("Let an access ID use it: manage.py accessid create --name NAME --pools "
                                             "%(slug)s") % names)

    def _list(self, options):
        rows = []
        for pool in CardPool.objects.order_by("slug"):
            # The reasons a card is not used: in English in the JSON, for people otherwise.
            enterprise, cards = pool_cards(pool_read(pool.slug), display=not options["json"])
            rows.append({"slug": pool.slug, "name": str(pool), "enabled": pool.enabled,
                         "enterprise": enterprise, "up": sum(1 for c in cards if c.up), "size": len(cards),
                         "cards": [{"slug": c.slug, "up": c.up, "reason": c.reason} for c in cards]})
        if options["json"]:
            self.stdout.write(json.dumps(rows, ensure_ascii=False))
            return
        if not rows:
            self.stdout.write(_("no card pools"))
        for row in rows:
            text = (_("%(slug)s: %(up)d/%(size)d cards up — %(enterprise)s") if row["enabled"]
                    else _("%(slug)s (disabled): %(up)d/%(size)d cards up — %(enterprise)s"))
            self.stdout.write(text % {**row, "enterprise": row["enterprise"] or "?"})
            for card in row["cards"]:
                state = pgettext("card state", "up") if card["up"] else card["reason"]
                self.stdout.write(f"  {card['slug']}: {state}")
