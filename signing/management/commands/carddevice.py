"""`manage.py carddevice`: card devices from the command line, agent tokens included."""

import datetime
import json
import os

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from core.durations import duration_parse
from signing.agents import AgentTokenError, agent_token_create, agent_token_rotate, agent_tokens_revoke
from signing.cards import device_status_get
from signing.models import AgentToken, CardDevice
from signing.services import card_device_create


class Command(BaseCommand):
    help = "Manage card devices: create (a card the platform dials, or one behind a card agent), list, agent tokens."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="add a card device")
        create.add_argument("--slug", required=True)
        create.add_argument("--name", default="")
        where = create.add_mutually_exclusive_group(required=True)
        where.add_argument("--url", help="the E-Port control the platform connects to, e.g. ws://10.0.0.5:61232")
        where.add_argument("--agent", action="store_true",
                           help="a card agent on the card's PC connects in; prints its agent token once")
        create.add_argument("--pin-env", metavar="VAR", help="the card PIN, from this environment variable")
        create.add_argument("--json", action="store_true", help='print only {"slug": ..., "agent_token": ...}')
        sub.add_parser("list", help="list card devices and their state")
        rotate = sub.add_parser("rotate-token", help="a new agent token; the old one works for the grace period")
        rotate.add_argument("slug")
        rotate.add_argument("--grace", default="24h", help="0, 1h, 24h (default), up to 7d")
        rotate.add_argument("--json", action="store_true")
        revoke = sub.add_parser("revoke-token", help="revoke every agent token of a device (its agent is cut off)")
        revoke.add_argument("slug")

    def handle(self, *args, **options):
        return getattr(self, "_" + options["action"].replace("-", "_"))(options)

    def _device(self, slug: str) -> CardDevice:
        device = CardDevice.objects.filter(slug=slug).first()
        if device is None:
            raise CommandError(f"no card device {slug!r}")
        return device

    def _create(self, options):
        pin = ""
        if options["pin_env"]:
            pin = os.environ.get(options["pin_env"], "")
            if not pin:
                raise CommandError(f"environment variable {options['pin_env']} is empty or not set")
        if CardDevice.objects.filter(slug=options["slug"]).exists():
            raise CommandError(f"card device {options['slug']!r} exists already")
        transport = CardDevice.TRANSPORT_AGENT if options["agent"] else CardDevice.TRANSPORT_URL
        try:
            device = card_device_create(slug=options["slug"], name=options["name"], transport=transport,
                                        url=options["url"] or "", pin=pin)
        except Exception as exc:  # ValidationError: name the fields
            raise CommandError(f"card device not created: {getattr(exc, 'message_dict', exc)}") from None
        token = agent_token_create(device=device)[1] if options["agent"] else None
        if options["json"]:
            self.stdout.write(json.dumps({"slug": device.slug, **({"agent_token": token} if token else {})}))
            return
        self.stdout.write(f"Card device {device.slug} created ({device.get_transport_display()}).")
        if token:
            self.stdout.write("Agent token (shown only now; give it to the agent with --token-env or --token-file):")
            self.stdout.write(token)

    def _list(self, options):
        # Without Redis the live state is in the web process's memory only.
        shared = "LocMemCache" not in settings.CACHES["default"]["BACKEND"]
        if not shared:
            self.stdout.write("(live state: see /api/v1/health — without Redis it is in the web process only)")
        for device in CardDevice.objects.order_by("slug"):
            status = device_status_get(device.slug) if shared else None
            state = ("connected" if status and status.can_sign else ("down" if status and status.alive
                                                                       else "not running")) if shared else "-"
            where = "agent" if device.is_agent else device.url
            tokens = device.agent_tokens.exclude(state=AgentToken.REVOKED).count() if device.is_agent else 0
            self.stdout.write(f"{device.slug:<20} {'enabled' if device.enabled else 'disabled':<9} {state:<12} "
                              f"{where}{f'  ({tokens} valid token(s))' if device.is_agent else ''}")

    def _rotate_token(self, options):
        device = self._device(options["slug"])
        if not device.is_agent:
            raise CommandError(f"card device {device.slug} is not an agent card")
        try:
            grace = duration_parse(options["grace"], units="smhd", default_unit="s")
            row, token = agent_token_rotate(device=device, grace=grace)
        except (ValueError, AgentTokenError) as exc:
            raise CommandError(str(exc)) from None
        if options["json"]:
            self.stdout.write(json.dumps({"slug": device.slug, "agent_token": token, "version": row.version}))
            return
        until = f"until {(datetime.datetime.now() + grace):%Y-%m-%d %H:%M}" if grace else "no longer"
        self.stdout.write(f"New agent token (version {row.version}, shown only now); the old one works {until}:")
        self.stdout.write(token)

    def _revoke_token(self, options):
        count = agent_tokens_revoke(device=self._device(options["slug"]))
        self.stdout.write(f"Revoked {count} agent token(s) of {options['slug']}; its agent is cut off.")
