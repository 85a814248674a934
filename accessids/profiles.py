"""The client profiles (docs/client-profiles.md): the wire formats of the signing services
the platform replaces, each enabled per access ID. This is the catalogue the admin, the
`accessid profile` command and the authentication schemes (api/schemes.py) share."""

from __future__ import annotations

from dataclasses import dataclass

from django.utils.translation import gettext_lazy as _

NATIVE = "native"
GYS = "gys"
X_SIGNATURE = "x-signature"
CP_MD5 = "cp-md5"
SIGN_SERVER = "sign-server"
ACS = "acs"

MAX_WINDOW_SECONDS = 3600


@dataclass(frozen=True)
class ProfileKind:
    name: str
    label: str  # the texts below are lazy translations: shown in the language of the page
    source_system: str
    window_seconds: int  # the default time window (± seconds around the server's clock)
    has_default: bool  # requests may omit the access ID: the deployment's default one is used
    weak_reason: str = ""  # why the scheme is weak ("" when it is not)
    has_window: bool = True  # requests carry a timestamp checked against a time window

    @property
    def weak(self) -> bool:
        return bool(self.weak_reason)


# The profiles an administrator turns on per access ID (native is always on; sign-server
# is on for an access ID with a legacy AES key).
PROFILE_KINDS = {
    GYS: ProfileKind(
        GYS, _("gys (HMAC-SHA256 over sorted parameters)"), _("the HMAC validator with gys_* headers"), 300, False,
    ),
    X_SIGNATURE: ProfileKind(
        X_SIGNATURE, _("x-signature (HMAC-SHA256 Base64, timestamp and nonce)"), _("the FastAPI internal API"), 300,
        True,
        weak_reason=_("the signature covers only the nonce and the timestamp, not the request body or path: whoever "
                      "sees one request in transit can send any body with its headers before the nonce is used"),
    ),
    CP_MD5: ProfileKind(
        CP_MD5, _("cp-md5 (chinaport-proxy MD5 signatures, POST /rpc)"), _("the Go chinaport-proxy"), 3, True,
        weak_reason=_("MD5 is broken (collisions can be made), it is a plain hash of the text and the App Secret "
                      "rather than an HMAC, and the query string is not signed; use only for clients that cannot "
                      "change, on a private network"),
    ),
    ACS: ProfileKind(
        ACS, _("acs (access system: tokens, MD5 signatures, encrypted payloads)"), _("the access system (接入系统)"),
        0, False, has_window=False,
        weak_reason=_("its signature is MD5 with the key appended (not an HMAC) and its requests carry no timestamp: "
                      "a captured request is refused as a replay only while its token lives (two hours); DES, when "
                      "chosen, is broken. Its own settings (sender code, token, signature, encryption, keys and "
                      "certificates) are on the access ID's “Access system” page"),
    ),
}
PROFILE_CHOICES = [(kind.name, kind.name) for kind in PROFILE_KINDS.values()]
# Every profile name an audit event may carry.
AUDIT_PROFILES = (NATIVE, GYS, X_SIGNATURE, CP_MD5, SIGN_SERVER, ACS)
