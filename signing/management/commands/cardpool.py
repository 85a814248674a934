"""`manage.py cardpool`: card pools from the command line."""

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from signing.models import CardDevice, CardPool
from signing.pools import pool_cards, pool_read
from signing.services import card_pool_create


class Command(BaseCommand):
    help = "Manage card pools: create one from card devices, list them with their capacity."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="group card devices in a pool")
        create.add_argument("--slug", required=True)
        create.add_argument("--name", default="")
        create.add_argument("--devices", required=True, help="the cards' slugs, comma separated")
        create.add_argument("--enterprise", default="",
                            help="the enterprise every card's certificate must name (default: the cards')")
        listing = sub.add_parser("list", help="list pools and how many of their cards are up")
        listing.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        return getattr(self, "_" + options["action"])(options)

    def _create(self, options):
        slugs = [s.strip() for s in options["devices"].split(",") if s.strip()]
        devices = list(CardDevice.objects.filter(slug__in=slugs))
        missing = sorted(set(slugs) - {d.slug for d in devices})
        if missing:
            raise CommandError(f"no card device {', '.join(missing)}")
        if CardPool.objects.filter(slug=options["slug"]).exists():
            raise CommandError(f"card pool {options['slug']!r} exists already")
        try:
            pool = card_pool_create(slug=options["slug"], name=options["name"], devices=devices,
                                    enterprise=options["enterprise"])
        except ValidationError as exc:
            problems = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in exc.message_dict.items())
            raise CommandError(problems) from None
        self.stdout.write(f"card pool {pool.slug} created with {len(devices)} card(s): {', '.join(sorted(slugs))}"
                          + (f"; enterprise {pool.enterprise}" if pool.enterprise else
                             "; its enterprise is taken from the cards once connected")
                          + f"\nLet an access ID use it: manage.py accessid create --name NAME --pools {pool.slug}")

    def _list(self, options):
        rows = []
        for pool in CardPool.objects.order_by("slug"):
            enterprise, cards = pool_cards(pool_read(pool.slug))
            rows.append({"slug": pool.slug, "name": str(pool), "enabled": pool.enabled,
                         "enterprise": enterprise, "up": sum(1 for c in cards if c.up), "size": len(cards),
                         "cards": [{"slug": c.slug, "up": c.up, "reason": c.reason} for c in cards]})
        if options["json"]:
            self.stdout.write(json.dumps(rows, ensure_ascii=False))
            return
        if not rows:
            self.stdout.write("no card pools")
        for row in rows:
            state = "" if row["enabled"] else " (disabled)"
            self.stdout.write(f"{row['slug']}{state}: {row['up']}/{row['size']} cards up — {row['enterprise'] or '?'}")
            for card in row["cards"]:
                self.stdout.write(f"  {card['slug']}: {'up' if card['up'] else card['reason']}")
