"""`manage.py carddevice`: card devices from the command line, agent tokens included."""

import datetime
import json
import os

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _
from django.utils.translation import ngettext, pgettext

from core.durations import duration_parse
from signing.agents import AgentTokenError, agent_token_create, agent_token_rotate, agent_tokens_revoke
from signing.cards import device_status_get
from signing.models import AgentToken, CardDevice
from signing.services import card_device_create


class Command(BaseCommand):
    help = _("Manage card devices: create (a card the platform dials, or one behind a card agent), list, "
             "agent tokens.")

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help=_("add a card device"))
        create.add_argument("--slug", required=True)
        create.add_argument("--name", default="")
        where = create.add_mutually_exclusive_group(required=True)
        where.add_argument("--url", help=_("the E-Port control the platform connects to, e.g. ws://10.0.0.5:61232"))
        where.add_argument("--agent", action="store_true",
                           help=_("a card agent on the card's PC connects in; prints its agent token once"))
        create.add_argument("--pin-env", metavar="VAR", help=_("the card PIN, from this environment variable"))
        create.add_argument("--json", action="store_true", help=_('print only {"slug": ..., "agent_token": ...}'))
        sub.add_parser("list", help=_("list card devices and their state"))
        rotate = sub.add_parser("rotate-token", help=_("a new agent token; the old one works for the grace period"))
        rotate.add_argument("slug")
        rotate.add_argument("--grace", default="24h", help=_("0, 1h, 24h (default), up to 7d"))
        rotate.add_argument("--json", action="store_true")
        revoke = sub.add_parser("revoke-token", help=_("revoke every agent token of a device (its agent is cut off)"))
        revoke.add_argument("slug")

    def handle(self, *args, **options):
        return getattr(self, "_" + options["action"].replace("-", "_"))(options)

    def _device(self, slug: str) -> CardDevice:
        device = CardDevice.objects.filter(slug=slug).first()
        if device is None:
            raise CommandError(_("no card device %(slug)s") % {"slug": repr(slug)})
        return device

    def _create(self, options):
        pin = ""
        if options["pin_env"]:
            pin = os.environ.get(options["pin_env"], "")
            if not pin:
                raise CommandError(_("environment variable %(var)s is empty or not set") % {"var": options["pin_env"]})
        if CardDevice.objects.filter(slug=options["slug"]).exists():
            raise CommandError(_("card device %(slug)s exists already") % {"slug": repr(options["slug"])})
        transport = CardDevice.TRANSPORT_AGENT if options["agent"] else CardDevice.TRANSPORT_URL
        try:
            device = card_device_create(slug=options["slug"], name=options["name"], transport=transport,
                                        url=options["url"] or "", pin=pin)
        except Exception as exc:  # ValidationError: name the fields
            raise CommandError(_("card device not created: %(problems)s")
                               % {"problems": getattr(exc, "message_dict", exc)}) from None
        token = agent_token_create(device=device)[1] if options["agent"] else None
        if options["json"]:
            self.stdout.write(json.dumps({"slug": device.slug, **({"agent_token": token} if token else {})}))
            return
        self.stdout.write(_("Card device %(slug)s created (%(transport)s).")
                          % {"slug": device.slug, "transport": device.get_transport_display()})
        if token:
            self.stdout.write(_("Agent token (shown only now; give it to the agent with --token-env or --token-file):"))
            self.stdout.write(token)

    def _list(self, options):
        # Without Redis the live state is in the web process's memory only.
        shared = "LocMemCache" not in settings.CACHES["default"]["BACKEND"]
        if not shared:
            self.stdout.write(_("(live state: see /api/v1/health — without Redis it is in the web process only)"))
        for device in CardDevice.objects.order_by("slug"):
            status = device_status_get(device.slug) if shared else None
            state = ((pgettext("card state", "connected") if status and status.can_sign
                      else (pgettext("card state", "down") if status and status.alive
                            else pgettext("card state", "not running"))) if shared else "-")
            where = pgettext("card transport", "agent") if device.is_agent else device.url
            enabled = pgettext("card device", "enabled") if device.enabled else pgettext("card device", "disabled")
            tokens = ""
            if device.is_agent:
                count = device.agent_tokens.exclude(state=AgentToken.REVOKED).count()
                tokens = "  " + ngettext("(%(count)d valid token(s))", "(%(count)d valid token(s))", count) % {
                    "count": count}
            self.stdout.write(f"{device.slug:<20} {enabled:<9} {state:<12} {where}{tokens}")

    def _rotate_token(self, options):
        device = self._device(options["slug"])
        if not device.is_agent:
            raise CommandError(_("card device %(slug)s is not an agent card") % {"slug": device.slug})
        try:
            grace = duration_parse(options["grace"], units="smhd", default_unit="s")
            row, token = agent_token_rotate(device=device, grace=grace)
        except (ValueError, AgentTokenError) as exc:
            raise CommandError(str(exc)) from None
        if options["json"]:
            self.stdout.write(json.dumps({"slug": device.slug, "agent_token": token, "version": row.version}))
            return
        if grace:
            message = _("New agent token (version %(version)s, shown only now); the old one works until %(until)s:") % {
                "version": row.version, "until": f"{(datetime.datetime.now() + grace):%Y-%m-%d %H:%M}"}
        else:
            message = _("New agent token (version %(version)s, shown only now); the old one works no longer:") % {
                "version": row.version}
        self.stdout.write(message)
        self.stdout.write(token)

    def _revoke_token(self, options):
        count = agent_tokens_revoke(device=self._device(options["slug"]))
        self.stdout.write(ngettext("Revoked %(count)d agent token(s) of %(slug)s; its agent is cut off.",
                                   "Revoked %(count)d agent token(s) of %(slug)s; its agent is cut off.", count)
                          % {"count": count, "slug": options["slug"]})
