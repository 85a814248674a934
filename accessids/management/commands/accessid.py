import json
import os

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils.translation import gettext as _
from django.utils.translation import pgettext

from accessids.models import DEFAULT_SCOPES, AccessId, AppSecret
from accessids.profiles import PROFILE_KINDS
from accessids.services import (
    AccessIdError,
    access_id_create,
    access_id_profile_set,
    access_id_set_enabled,
    access_id_set_legacy_key,
    app_secret_rotate,
    grace_parse,
    methods_parse,
    scopes_parse,
)
from signing.models import CardDevice, CardPool


class Command(BaseCommand):
    help = _("Manage access IDs: create, list, rotate, disable, enable.")

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help=_("create an access ID and print its secret once"))
        create.add_argument("--name", required=True)
        create.add_argument("--scopes", help=_("comma-separated; when omitted the signing scopes (%(scopes)s): rpc "
                                               "and xml_read_all only when named") % {"scopes": ",".join(DEFAULT_SCOPES)})
        create.add_argument("--methods", default="", metavar="METHODS",
                            help=_("card methods the rpc scope may call, comma-separated, or 'all' (none when "
                                   "omitted)"))
        create.add_argument("--description", default="")
        create.add_argument("--devices", default="", help=_("card devices it may use, comma separated (default: the "
                                                            "default card)"))
        create.add_argument("--pools", default="", help=_("card pools it may use, comma separated (the first is its "
                                                          "default)"))
        create.add_argument("--rate-limit", type=int, default=None, metavar="N",
                            help=_("requests per minute (default 600)"))
        create.add_argument("--json", action="store_true", help=_('print only {"access_id": ..., "secret": ...}'))
        self._legacy_arguments(create)
        legacy = sub.add_parser(
            "legacy-key", help=_("give an access ID a legacy sign-server AES key (or remove it with --remove)")
        )
        legacy.add_argument("access_id")
        self._legacy_arguments(legacy)
        legacy.add_argument("--remove", action="store_true", help=_("remove the legacy AES key"))
        sub.add_parser("list", help=_("list access IDs"))
        rotate = sub.add_parser("rotate", help=_("issue a new secret; the old one stays valid for the grace period"))
        rotate.add_argument("access_id")
        rotate.add_argument("--grace", default="24h", help=_("0, 1h, 24h (default) or 7d"))
        rotate.add_argument("--json", action="store_true")
        for action in ("disable", "enable"):
            sub.add_parser(action).add_argument("access_id")
        profile = sub.add_parser(
            "profile", help=_("turn a client profile (gys, x-signature, cp-md5) on or off for an access ID, or show "
                              "them"),
        )
        profile.add_argument("access_id")
        which = profile.add_mutually_exclusive_group()
        which.add_argument("--enable", metavar="NAME", choices=sorted(PROFILE_KINDS),
                           help=_("turn the profile on (or change its settings)"))
        which.add_argument("--disable", metavar="NAME", choices=sorted(PROFILE_KINDS), help=_("turn the profile off"))
        profile.add_argument("--default", action="store_true",
                             help=_("make this access ID the one requests of the profile without an access ID belong "
                                    "to (x-signature, cp-md5; taken from the access ID that had it)"))
        profile.add_argument("--window-seconds", type=int, metavar="N",
                             help=_("how far a request's timestamp may be from the server's clock (0: the profile's "
                                    "default)"))
        profile.add_argument("--json", action="store_true", help=_("print the access ID's profiles as JSON"))
        acs = sub.add_parser("acs", help=_("the access system settings of an access ID (sender code, encryption, "
                                           "...)"))
        acs.add_argument("access_id")
        acs.add_argument("--sender", help=_("the sender code (Ccode) the party sends"))
        acs.add_argument("--encryption", choices=["none", "aes", "des", "rsa", "rsa2", "rsa+aes", "rsa+des"])
        acs.add_argument("--signature", choices=["md5", "none"])
        token = acs.add_mutually_exclusive_group()
        token.add_argument("--token", dest="token", action="store_true", default=None, help=_("require a token"))
        token.add_argument("--no-token", dest="token", action="store_false", help=_("no token needed"))
        acs.add_argument("--open", action="store_true",
                         help=_("confirm a fully open party (no token, no signature, no encryption)"))
        acs_key = sub.add_parser("acs-key", help=_("set, generate or start using the access system key"))
        acs_key.add_argument("access_id")
        what = acs_key.add_mutually_exclusive_group(required=True)
        what.add_argument("--set", metavar="KEY", help=_("the key the party was given (pending until --use-new)"))
        what.add_argument("--set-env", metavar="VAR", help=_("read the key from this environment variable"))
        what.add_argument("--generate", action="store_true", help=_("generate a pending key and print it once"))
        what.add_argument("--use-new", action="store_true", help=_("make the pending key current"))
        acs_key.add_argument("--grace-seconds", type=int, default=86400,
                             help=_("how long the old key stays valid after --use-new (default 1 day)"))
        acs_cert = sub.add_parser("acs-cert", help=_("generate the platform's certificate for a party, or upload "
                                                     "the party's encryption certificate"))
        acs_cert.add_argument("access_id")
        cert_what = acs_cert.add_mutually_exclusive_group(required=True)
        cert_what.add_argument("--generate", action="store_true")
        cert_what.add_argument("--upload", metavar="FILE.pem")
        acs_cert.add_argument("--out", metavar="FILE.pem", help=_("with --generate: where to write the certificate"))

    @staticmethod
    def _legacy_arguments(parser):
        parser.add_argument(
            "--legacy-aes-key", metavar="KEY",
            help=_("the AES key legacy sign-server clients encrypt with (enables /getCode and /xml-files for them)"),
        )
        parser.add_argument(
            "--legacy-aes-key-env", metavar="VAR",
            help=_("read the legacy AES key from this environment variable (keeps it out of the process list)"),
        )

    @staticmethod
    def _legacy_key(options) -> str:
        if options.get("legacy_aes_key_env"):
            value = os.environ.get(options["legacy_aes_key_env"], "")
            if not value:
                raise CommandError(_("environment variable %(var)s is empty or not set")
                                   % {"var": options["legacy_aes_key_env"]})
            return value
        return options.get("legacy_aes_key") or ""

    def handle(self, *args, **options):
        try:
            action = options["action"].replace("-", "_")
            handler = {"legacy_key": "_legacy_key_action", "acs_key": "_acs_key", "acs_cert": "_acs_cert"}.get(
                action, f"_{action}")
            getattr(self, handler)(options)
        except AccessIdError as exc:
            raise CommandError(str(exc)) from None

    def _get(self, key: str) -> AccessId:
        access = AccessId.objects.filter(key=key).first()
        if access is None:
            raise CommandError(_("no access ID %(key)s") % {"key": repr(key)})
        return access

    @staticmethod
    def _named(model, text: str) -> list:
        slugs = [s.strip() for s in text.split(",") if s.strip()]
        rows = list(model.objects.filter(slug__in=slugs))
        missing = sorted(set(slugs) - {r.slug for r in rows})
        if missing:
            message = _("no card device %(slug)s") if model is CardDevice else _("no card pool %(slug)s")
            raise CommandError(message % {"slug": ", ".join(missing)})
        return rows

    def _create(self, options):
        legacy_key = self._legacy_key(options)
        devices = self._named(CardDevice, options["devices"])
        pools = self._named(CardPool, options["pools"])
        extra = {}
        if options["rate_limit"] is not None:
            if not 1 <= options["rate_limit"] <= 10_000_000:
                raise CommandError(_("--rate-limit is between 1 and 10000000 requests per minute"))
            extra["rate_limit_per_minute"] = options["rate_limit"]
        scopes = scopes_parse(options["scopes"])
        methods = methods_parse(options["methods"])
        if "rpc" in scopes and not methods:
            raise CommandError(_("the rpc scope calls only the card methods named: add --methods "
                                 "cus-sec_SpcGetCertNo,... (or --methods all)"))
        with transaction.atomic():  # an access ID whose legacy key was refused is not created
            access, secret = access_id_create(
                name=options["name"], scopes=scopes, allowed_methods=methods, description=options["description"],
                devices=devices, pools=pools, **extra,
            )
            if legacy_key:
                access_id_set_legacy_key(access_id=access, legacy_key=legacy_key)
        if options["json"]:
            self.stdout.write(json.dumps({"access_id": access.key, "secret": secret}))
            return
        self.stdout.write(
            _("Created access ID %(key)s (%(name)s), scopes %(scopes)s")
            % {"key": access.key, "name": access.name, "scopes": ", ".join(access.scopes)} + "\n"
            + (_("Legacy sign-server clients using the given AES key are now attributed to it.") + "\n"
               if legacy_key else "")
            + _("App Secret (shown only now, store it safely):") + f"\n{secret}"
        )

    def _legacy_key_action(self, options):
        access = self._get(options["access_id"])
        legacy_key = "" if options["remove"] else self._legacy_key(options)
        if not legacy_key and not options["remove"]:
            raise CommandError(_("give --legacy-aes-key KEY, --legacy-aes-key-env VAR or --remove"))
        access_id_set_legacy_key(access_id=access, legacy_key=legacy_key)
        self.stdout.write((_("Legacy AES key of %(key)s removed") if options["remove"]
                           else _("Legacy AES key of %(key)s set")) % {"key": access.key})

    def _list(self, options):
        rows = AccessId.objects.prefetch_related("secrets").order_by("name")
        if not rows:
            self.stdout.write(_("No access IDs yet: python manage.py accessid create --name NAME"))
            return
        headers = (_("ACCESS ID"), _("STATUS"), _("SECRET"), _("LAST USED"), _("NAME / SCOPES"))
        self.stdout.write("{:<24} {:<9} {:<14} {:<20} {}".format(*headers))
        statuses = {"enabled": pgettext("access ID status", "enabled"),
                    "disabled": pgettext("access ID status", "disabled"),
                    "expired": pgettext("access ID status", "expired")}
        for access in rows:
            current = next((s for s in access.secrets.all() if s.state == AppSecret.CURRENT), None)
            status = statuses.get(access.status, access.status)
            used = access.last_used_at.strftime("%Y-%m-%d %H:%M:%S") if access.last_used_at else _("never")
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
        names = {"key": access.key, "version": row.version, "fingerprint": row.fingerprint, "grace": options["grace"]}
        if grace.total_seconds() > 0:
            rotated = _("Rotated %(key)s: new secret version %(version)s (fingerprint %(fingerprint)s); the previous "
                        "secret stays valid for %(grace)s.") % names
        else:
            rotated = _("Rotated %(key)s: new secret version %(version)s (fingerprint %(fingerprint)s); the previous "
                        "secret is revoked now.") % names
        self.stdout.write(rotated + "\n" + _("New App Secret (shown only now):") + f"\n{secret}")

    def _disable(self, options):
        access = access_id_set_enabled(access_id=self._get(options["access_id"]), enabled=False)
        self.stdout.write(_("Disabled %(key)s: its requests are refused from now on") % {"key": access.key})

    def _enable(self, options):
        access = access_id_set_enabled(access_id=self._get(options["access_id"]), enabled=True)
        self.stdout.write(_("Enabled %(key)s") % {"key": access.key})

    def _profile(self, options):
        access = self._get(options["access_id"])
        name = options["enable"] or options["disable"]
        if name is None and (options["default"] or options["window_seconds"] is not None):
            raise CommandError(_("give --enable NAME with --default or --window-seconds"))
        if options["disable"] and (options["default"] or options["window_seconds"] is not None):
            raise CommandError(_("--default and --window-seconds go with --enable, not --disable"))
        if name is not None:
            changes = {"enabled": bool(options["enable"])}
            if options["window_seconds"] is not None:
                changes["window_seconds"] = options["window_seconds"] or None
            if options["default"]:
                changes["default"] = True
            elif options["disable"]:
                changes["default"] = False  # a profile that is off is nobody's default
            if not PROFILE_KINDS[name].has_window and options["window_seconds"] is not None:
                raise CommandError(_("the %(name)s profile has no time window (its requests carry no timestamp)")
                                   % {"name": name})
            access_id_profile_set(access_id=access, name=name, **changes)
        rows = {p.name: p for p in access.profiles.all()}
        listing = [
            {"profile": kind.name, "enabled": bool(rows.get(kind.name) and rows[kind.name].enabled),
             "window_seconds": rows[kind.name].window if kind.name in rows else kind.window_seconds,
             "default": bool(rows.get(kind.name) and rows[kind.name].is_default), "weak": kind.weak}
            for kind in PROFILE_KINDS.values()
        ]
        if options["json"]:
            self.stdout.write(json.dumps({"access_id": access.key, "profiles": listing}))
            return
        if name is not None:
            self.stdout.write((_("%(key)s: profile %(name)s enabled") if options["enable"]
                               else _("%(key)s: profile %(name)s disabled")) % {"key": access.key, "name": name})
        for row in listing:
            kind = PROFILE_KINDS[row["profile"]]
            state = pgettext("client profile", "on") if row["enabled"] else pgettext("client profile", "off")
            extra = _(", default access ID") if row["default"] else ""
            window = (_("window ±%(seconds)s s") % {"seconds": row["window_seconds"]} if kind.has_window
                      else _("tokens live 2 h"))
            self.stdout.write(f"  {row['profile']:<12} {state:<3} {window}{extra}"
                              + ("  " + _("(weak: %(reason)s)") % {"reason": kind.weak_reason}
                                 if kind.weak and row["enabled"] else ""))

    def _acs(self, options):
        from accessids.acs import acs_settings_set

        access = self._get(options["access_id"])
        changes = {"sender_code": options["sender"], "encryption": options["encryption"],
                   "signature": options["signature"], "token_required": options["token"]}
        if options["open"]:
            changes["open_confirmed"] = True
        party = acs_settings_set(access_id=access, **changes)
        names = {"key": access.key, "sender": party.sender_code, "encryption": party.encryption,
                 "signature": party.signature}
        self.stdout.write(
            (_("%(key)s: sender %(sender)s, encryption %(encryption)s, signature %(signature)s, token required")
             if party.token_required else
             _("%(key)s: sender %(sender)s, encryption %(encryption)s, signature %(signature)s, token not required"))
            % names
            + (_(" — FULLY OPEN: anyone knowing the sender code can sign") if party.fully_open else ""))

    def _acs_key(self, options):
        import datetime

        from accessids.acs import acs_key_set, acs_key_use_new, key_fingerprint

        access = self._get(options["access_id"])
        if options["use_new"]:
            party = acs_key_use_new(access_id=access, grace=datetime.timedelta(seconds=options["grace_seconds"]))
            names = {"key": access.key, "version": party.key_version}
            if party.previous_key_valid_until:
                self.stdout.write(_("%(key)s: key version %(version)s in use; the previous key stays valid until "
                                    "%(until)s")
                                  % {**names, "until": f"{party.previous_key_valid_until:%Y-%m-%d %H:%M}"})
            else:
                self.stdout.write(_("%(key)s: key version %(version)s in use") % names)
            return
        key = ""
        if options["set_env"]:
            key = os.environ.get(options["set_env"], "")
            if not key:
                raise CommandError(_("environment variable %(var)s is empty or not set") % {"var": options["set_env"]})
        elif options["set"]:
            key = options["set"]
        key = acs_key_set(access_id=access, key=key)
        if options["generate"]:
            self.stdout.write(_("%(key)s: pending key (shown only now; give it to the party, then --use-new):")
                              % {"key": access.key} + f"\n{key}")
        else:
            self.stdout.write(_("%(key)s: pending key %(fingerprint)s set; make it current with --use-new")
                              % {"key": access.key, "fingerprint": key_fingerprint(key)})

    def _acs_cert(self, options):
        from pathlib import Path

        from accessids.acs import acs_cert_generate, acs_cert_upload

        access = self._get(options["access_id"])
        if options["generate"]:
            pem = acs_cert_generate(access_id=access)
            if options["out"]:
                Path(options["out"]).write_text(pem)
                self.stdout.write(_("%(key)s: certificate written to %(path)s (give it to the party)")
                                  % {"key": access.key, "path": options["out"]})
            else:
                self.stdout.write(pem)
            return
        try:
            data = Path(options["upload"]).read_bytes()
        except OSError as exc:
            raise CommandError(_("cannot read %(path)s: %(error)s")
                               % {"path": options["upload"], "error": exc.strerror}) from None
        party = acs_cert_upload(access_id=access, pem=data)
        self.stdout.write(_("%(key)s: encryption certificate %(subject)s, SHA-256 %(fingerprint)s, valid until "
                            "%(until)s") % {"key": access.key, "subject": party.party_certificate_subject,
                                            "fingerprint": party.party_certificate_fingerprint,
                                            "until": f"{party.party_certificate_not_after:%Y-%m-%d}"})
