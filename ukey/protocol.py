"""The E-Port client control's WebSocket protocol as pure functions (no I/O).

Both sides live here: the gateway builds requests and parses responses, the card
simulator parses requests and builds responses. See docs/card-protocol.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

HANDSHAKE_ID = 0
HANDSHAKE_METHOD = "open"
STATUS_PROCESSED = "00"

# Methods whose args carry the card PIN as `passwd`.
PIN_METHODS = frozenset(
    {
        "cus-sec_SpcSignDataAsPEM",
        "cus-sec_SpcSignDataNoHashAsPEM",
        "cus-sec_SpcSignRandom",
    }
)

# Methods that sign (Data on success: [signatureBase64, certNo]).
SIGN_METHODS = frozenset({"cus-sec_SpcSignDataAsPEM", "cus-sec_SpcSignDataNoHashAsPEM"})

# Card methods a client system may reach through `POST /api/v1/rpc` (each access ID
# further limits itself to a subset). PIN changes, decryption and the `swc_`/`security_`
# families are never passed through.
RPC_METHODS = (
    "cus-sec_SpcSignDataAsPEM",
    "cus-sec_SpcSignDataNoHashAsPEM",
    "cus-sec_SpcGetCertNo",
    "cus-sec_SpcGetEntName",
    "cus-sec_SpcGetSignCertAsPEM",
    "cus-sec_SpcGetEnvCertAsPEM",
    "cus-sec_SpcGetValidTimeFromCert",
    "cus-sec_SpcSHA1DigestAsPEM",
    "cus-sec_SpcVerifySignData",
    "cus-sec_SpcGetCardID",
    "cus-sec_SpcGetUName",
    "cus-sec_SpcGetEntID",
    "cus-sec_SpcGetEntMode",
    "cus-sec_SpcGetCardUserInfo",
)

# Methods that may be sent again, to another card of a pool, when a card failed without
# answering: they sign what the caller sent or read the card. A method not listed here is
# never repeated.
REPEATABLE_METHODS = frozenset(RPC_METHODS) | PIN_METHODS

# Card errors that mean the card did not do the operation (the reader had to be reset).
CARD_NOT_DONE_ERRORS = frozenset({"Custom50070"})

# The args each pass-through method needs (non-blank text) and may have; anything else, or a
# value that is not text, the control refuses (or worse), so the platform refuses it first.
RPC_ARGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cus-sec_SpcSignDataAsPEM": (("inData",), ()),
    "cus-sec_SpcSignDataNoHashAsPEM": (("inData",), ()),
    "cus-sec_SpcGetValidTimeFromCert": ((), ("cert",)),
    "cus-sec_SpcSHA1DigestAsPEM": (("szInfo",), ()),
    "cus-sec_SpcVerifySignData": (("inData", "signData"), ("certDataPEM",)),
}
_SHA1_HEX_RE = re.compile(r"^[0-9A-Fa-f]{40}$")


def rpc_args_problems(method: str, args: dict[str, Any]) -> dict[str, str]:
    """What is wrong with `args` for `method`, by arg name (empty when nothing). `passwd` is
    ignored: the gateway adds the PIN."""
    required, optional = RPC_ARGS.get(method, ((), ()))
    problems = {}
    for name, value in args.items():
        if name == "passwd":
            continue
        if name not in required and name not in optional:
            problems[name] = f"{method} takes no argument {name!r}"
        elif not isinstance(value, str):
            problems[name] = "must be text"
    for name in required:
        value = args.get(name)
        if name not in problems and (not isinstance(value, str) or not value.strip()):
            problems[name] = "required, and not empty or only white space"
    if method == "cus-sec_SpcSignDataNoHashAsPEM" and "inData" not in problems \
            and not _SHA1_HEX_RE.match(args["inData"].strip()):
        problems["inData"] = "must be the 40 hex digits of a SHA-1 digest"
    return problems


_ERROR_CODE_RE = re.compile(r"^Err:([A-Za-z]+)(\d+)$")


class FrameError(ValueError):
    """A frame that is not JSON or not an object."""


@dataclass(frozen=True)
class CardResult:
    """What the card said about one operation (`_args` of a response)."""

    ok: bool
    data: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def error_code(self) -> str | None:
        """The `Err:<Family><code>` entry of the error list, e.g. `Custom50070`."""
        for entry in self.errors:
            match = _ERROR_CODE_RE.match(str(entry))
            if match:
                return match.group(1) + match.group(2)
        return None

    @property
    def message(self) -> str:
        texts = [str(e) for e in self.errors if not _ERROR_CODE_RE.match(str(e))]
        return "; ".join(texts) or (self.error_code or "card error")

    def as_args(self) -> dict[str, Any]:
        return {"Result": self.ok, "Data": list(self.data), "Error": list(self.errors)}


@dataclass(frozen=True)
class Frame:
    """One parsed frame.

    kind is one of: "handshake", "response", "bare" (an old wrapper's
    `{Result, Data, Error}` without envelope), "request", "unknown".
    """

    kind: str
    id: int | None = None
    method: str | None = None
    status: str | None = None
    result: CardResult | None = None
    args: dict[str, Any] | None = None
    raw: dict[str, Any] | None = None


def _normalise_id(value: Any) -> int | None:
    """`_id` arrives as an int or, from some clients, as a decimal string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _card_result(args: dict[str, Any]) -> CardResult:
    data = args.get("Data")
    errors = args.get("Error")
    return CardResult(
        ok=args.get("Result") is True,
        data=list(data) if isinstance(data, list) else ([] if data is None else [data]),
        errors=[str(e) for e in errors] if isinstance(errors, list) else ([] if errors is None else [str(errors)]),
    )


def parse_frame(text: str | bytes) -> Frame:
    """Parse one frame from either side of the socket."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError(f"frame is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FrameError("frame is not a JSON object")

    frame_id = _normalise_id(obj.get("_id"))
    method = obj.get("_method") if isinstance(obj.get("_method"), str) else None

    if "_args" in obj and isinstance(obj["_args"], dict):
        if frame_id == HANDSHAKE_ID and method == HANDSHAKE_METHOD:
            return Frame(kind="handshake", id=0, method=method, status=obj.get("_status"), raw=obj)
        if frame_id is not None and frame_id >= 1:
            return Frame(
                kind="response",
                id=frame_id,
                method=method,
                status=obj.get("_status"),
                result=_card_result(obj["_args"]),
                raw=obj,
            )
        return Frame(kind="unknown", id=frame_id, method=method, raw=obj)
    if "args" in obj or ("_method" in obj and "_status" not in obj):
        args = obj.get("args")
        return Frame(
            kind="request",
            id=frame_id,
            method=method,
            args=args if isinstance(args, dict) else {},
            raw=obj,
        )
    if "Result" in obj:
        return Frame(kind="bare", id=frame_id, result=_card_result(obj), raw=obj)
    return Frame(kind="unknown", id=frame_id, method=method, raw=obj)


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def build_request(method: str, request_id: int, args: dict[str, Any] | None = None) -> str:
    """A request frame. `_id` 0 is the handshake's and is never used for a request."""
    if request_id < 1:
        raise ValueError("request _id must be >= 1")
    return _dumps({"_method": method, "_id": request_id, "args": dict(args or {})})


def build_response(request_id: int, method: str, result: CardResult) -> str:
    return _dumps(
        {"_id": request_id, "_method": method, "_status": STATUS_PROCESSED, "_args": result.as_args()}
    )


def build_bare_response(result: CardResult) -> str:
    return _dumps(result.as_args())


def build_handshake() -> str:
    return _dumps(
        {
            "_id": HANDSHAKE_ID,
            "_method": HANDSHAKE_METHOD,
            "_status": STATUS_PROCESSED,
            "_args": {"Result": True, "Data": [], "Error": []},
        }
    )


def card_error(message: str, family: str, code: int) -> CardResult:
    """A failure as the control reports it: message plus `Err:<Family><code>`."""
    return CardResult(ok=False, data=[], errors=[message, f"Err:{family}{code}"])


def redact_args(args: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of request args safe to log: the PIN is masked."""
    safe = dict(args or {})
    if "passwd" in safe:
        safe["passwd"] = "***"
    return safe
