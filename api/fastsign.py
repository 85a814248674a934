"""The fast path of `POST /api/v1/sign`, the request every client system sends most: the same
checks, card call and audit event as `SignView` on the lean handler, without Django's
handler chain and DRF's view machinery around them (about a quarter of a signing request's
CPU, issue 16).

It serves only the plain case and hands everything else, untouched, to the lean handler
(`signplatform/api_handler.py`), which answers it as before. Handed over, with its body:
- on its line and headers alone: anything but a native-signed `POST /api/v1/sign` with a
  JSON content type, a Content-Length up to FAST_BODY_MAX and a plain Accept (another
  scheme's headers, a query string, a script prefix, repeated headers, chunked, a Host
  outside DJANGO_ALLOWED_HOSTS, an HTTPS redirect);
- after the signature checks (`AuthScheme.verify`, checks 1–5, which change nothing): a
  request they refuse, and one whose body the view would refuse (the body is read as JSON
  only now, for a caller who proved to hold a secret, on the database thread);
- a nonce used before (the claim changed nothing).
Once the nonce is claimed (`AuthScheme.claim`), or when whether it was is not known (the
nonce store could not be reached), the request is this path's to finish: scope, rate limit,
the card, the one audit event before the answer, each refusal in the documented error shape
(`core.errors.error_response`, rendered by DRF's JSONRenderer as the view's would be), the
same headers (Allow, X-Request-ID, X-Card-Device, Django's security and frame headers). The
checks are the same functions the view's classes call; the audit event's fields come from
`SignedAPIView.audit_fields_for` and go through the same group commit. A refused request
costs its signature checks twice (here, then in the lean handler).

`API_FAST_PATH=0` turns it off (every request then takes the lean handler)."""

from __future__ import annotations

import io
import logging
import time
import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.utils import translation
from rest_framework.exceptions import Throttled
from rest_framework.renderers import JSONRenderer

from audit.services import data_digest
from core.dbthread import db_sync_to_async
from core.errors import ApiError, chinese_var, error_response, prefers_chinese
from core.jsontext import json_loads_strict
from core.logging import request_id_var
from signing.pools import CARD_HEADER, card_target_for, card_target_run
from signing.services import data_sign

from . import serializers as s
from .base import SignedAPIView, audit_batch, audit_writable_prove
from .errors import as_api_error
from .permissions import rate_limit_count, scopes_require
from .schemes import NativeScheme, scheme_for
from .views import SignView

logger = logging.getLogger(__name__)

PATH = "/api/v1/sign"
_SCOPES = SignView.required_scopes
_VIEW_HEADERS = SignView().default_response_headers  # what DRF adds to each of its answers (Allow)
_JSON_TYPES = frozenset({"application/json", "application/json; charset=utf-8", "application/json;charset=utf-8"})
# Accept values for which DRF's negotiation picks the JSON renderer with no parameters.
_ACCEPTED = frozenset({"*/*", "application/json", "application/*"})
_NOT_ACCEPTED = frozenset({"text/plain", "text/html"})
_NATIVE_HEADERS = (b"x-access-id", b"x-timestamp", b"x-nonce", b"x-signature")
# A larger body is handed over unread (texts to sign are small; the lean handler takes the rest).
FAST_BODY_MAX = 256 * 1024
_renderer = JSONRenderer()


def _noop(request):  # the get_response of the two middlewares whose hooks are called here
    return None


_security = SecurityMiddleware(_noop)
_frame = XFrameOptionsMiddleware(_noop)


# Requests of PATH this process's fast path served, and those it handed to the lean handler
# (signplatform/metrics.py: signplatform_sign_fast_path_total).
COUNTS = {"served": 0, "handed_over": 0}


class _Handover(Exception):
    """The request is the lean handler's (nothing has been changed)."""


def _accept_plain(value: bytes | None) -> bool:
    """Does DRF's negotiation of this Accept header pick JSON with no media type parameters?"""
    if value is None:
        return True
    if len(value) > 512 or value.count(b",") > 15:  # DRF reads only so much of it: let it decide
        return False
    kinds = [part.strip().lower() for part in value.decode("latin-1").split(",")]
    if any(";" in kind for kind in kinds):
        return False
    return any(kind in _ACCEPTED for kind in kinds) and all(kind in _ACCEPTED or kind in _NOT_ACCEPTED
                                                               for kind in kinds)


def eligible_headers(scope: dict) -> dict[bytes, bytes] | None:
    """The request's headers (lower-case names), if its line and headers are the plain case
    this path serves; None otherwise. Looks at nothing but the scope."""
    if scope.get("method") != "POST" or scope.get("path") != PATH or scope.get("query_string") \
            or scope.get("root_path") or scope.get("raw_path") not in (None, PATH.encode()):
        return None
    raw = scope.get("headers") or []
    headers = {name.lower(): value for name, value in raw}
    if len(headers) != len(raw) or b"transfer-encoding" in headers:
        return None
    if any(not headers.get(name, b"").strip() for name in _NATIVE_HEADERS):
        return None
    length = headers.get(b"content-length", b"")
    if not length.isdigit() or int(length) > min(FAST_BODY_MAX, settings.API_MAX_BODY_BYTES):
        return None
    if headers.get(b"content-type", b"").strip().lower().decode("latin-1") not in _JSON_TYPES:
        return None
    if not _accept_plain(headers.get(b"accept")):
        return None
    return headers


class FastSign:
    """ASGI app for `POST /api/v1/sign`; `lean` (the lean handler) gets what is not its own."""

    def __init__(self, lean) -> None:
        self.lean = lean

    async def __call__(self, scope, receive, send) -> None:
        headers = eligible_headers(scope)
        if headers is None:
            COUNTS["handed_over"] += 1
            await self.lean(scope, receive, send)
            return
        length = int(headers[b"content-length"])
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # as Django's handler: no answer, nothing done
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if not message.get("more_body", False) or size > length:
                break
        more = message.get("more_body", False)
        body = b"".join(chunks)
        if size != length or more:
            COUNTS["handed_over"] += 1
            await self.lean(scope, _replay(body, more, receive), send)
            return
        try:
            await self._serve(scope, body, headers, send)
        except _Handover:
            COUNTS["handed_over"] += 1
            await self.lean(scope, _replay(body, False, receive), send)
        else:
            COUNTS["served"] += 1

    async def _serve(self, scope, body: bytes, headers: dict[bytes, bytes], send) -> None:
        started = time.perf_counter()
        try:
            request, scheme = _prepared(scope, body)
        except Exception:  # _Handover, or whatever else: the lean handler says it in the documented shape
            raise _Handover from None
        request.auth_scheme = scheme
        request.request_id = str(uuid.uuid4())
        request.audit = {}
        request.audit_started = started
        language = headers.get(b"accept-language")
        tokens = (request_id_var.set(request.request_id),
                  chinese_var.set(prefers_chinese(language.decode("latin-1")[:200])) if language else None)
        try:
            with translation.override("en"):
                try:
                    checked = await db_sync_to_async(_checks)(request, scheme, body)
                except Exception as exc:  # the nonce may have been claimed: answered here (a 500)
                    checked = exc
                if checked is None:
                    raise _Handover
                response = await self._answer(request, checked, started)
        finally:
            request_id_var.reset(tokens[0])
            if tokens[1] is not None:
                chinese_var.reset(tokens[1])
        try:
            await self.lean.send_response(response, send)
        except OSError:  # the client went away; the request itself is complete
            logger.info("the client closed the connection before the answer was sent")

    async def _answer(self, request, checked, started: float) -> HttpResponse:
        """The card and the audit event after `_checks` (its refusal, or the client and the
        body): the answer."""
        device = None
        try:
            if isinstance(checked, Exception):
                raise checked
            client, data = checked
            text, no_hash = data["data"], data["no_hash"]
            request.audit["data_sha256"] = data_digest(text)
            request.card_trace = trace = {}
            access = client.access
            target = await card_target_for(devices=access.devices, pools=access.pools,
                                           requested=data.get("device"))
            result = await card_target_run(target, lambda card: data_sign(data=text, no_hash=no_hash, device=card),
                                           repeatable=True, trace=trace)
            device = trace["device"]
            request.audit["cert_no"] = result.cert_no
            body: dict[str, Any] = {"signature": result.signature, "cert_no": result.cert_no,
                                    "algorithm": result.algorithm, "device": result.device}
            if trace.get("pool"):
                body["pool"] = trace["pool"]
            body["request_id"] = request.request_id
            status, extra = 200, {}
        except Exception as exc:
            error = as_api_error(exc)
            failure = error_response(error, request.request_id)
            body, status, extra = failure.data, failure.status_code, dict(failure.headers)
        try:
            fields = SignedAPIView.audit_fields_for(request, status_code=status, data=body, started=started)
            await audit_batch.submit(fields)
        except Exception:
            logger.exception("the audit event of this request could not be written")
            failure = error_response(ApiError("INTERNAL_ERROR", "the request could not be recorded in the audit log",
                                              status=500), request.request_id)
            body, status, extra, device = failure.data, failure.status_code, dict(failure.headers), None
        return _response(request, body, status, extra, device)


def _prepared(scope, body: bytes) -> tuple[ASGIRequest, NativeScheme]:
    """The request and its scheme, if the request is this path's; raises `_Handover` (or
    anything else: the caller hands over then too). Reads the headers only, changes nothing."""
    request = ASGIRequest(scope, io.BytesIO(body))
    try:
        request.get_host()
    except DisallowedHost:
        raise _Handover from None
    if _security.process_request(request) is not None:  # SECURE_SSL_REDIRECT
        raise _Handover
    scheme = scheme_for(request)
    if not isinstance(scheme, NativeScheme):
        raise _Handover
    return request, scheme


_SIGN_FIELDS = frozenset({"data", "no_hash", "device"})


def _serializer_as_read_plainly() -> None:
    """`_body_plain` reads SignRequestSerializer's fields as they are declared now; a change to
    them stops the process from starting until `_body_plain` follows it."""
    from django.core.validators import ProhibitNullCharactersValidator
    from rest_framework.fields import empty
    from rest_framework.validators import ProhibitSurrogateCharactersValidator

    from .fields import not_blank

    def own(field) -> list:  # its validators besides the two every CharField has
        return [v for v in field.validators
                if not isinstance(v, (ProhibitNullCharactersValidator, ProhibitSurrogateCharactersValidator))]

    fields = s.SignRequestSerializer._declared_fields
    data, no_hash, device = fields["data"], fields["no_hash"], fields["device"]
    plain = (set(fields) == _SIGN_FIELDS
             and data.required and not data.trim_whitespace and not data.allow_blank and not data.allow_null
             and data.max_length is None and data.min_length is None and own(data) == [not_blank]
             and not no_hash.required and no_hash.default is False and not no_hash.allow_null and own(no_hash) == []
             and not device.required and device.default is empty and device.trim_whitespace and device.allow_blank
             and not device.allow_null and device.max_length is None and device.min_length is None
             and own(device) == [])
    if not plain:
        raise AssertionError("SignRequestSerializer changed: api/fastsign._body_plain must follow it")


_serializer_as_read_plainly()


def _body_plain(payload: Any) -> dict[str, Any] | None:
    """SignRequestSerializer's validated data for the body nearly every client sends (its own
    fields only, each of its JSON type, `data` not blank, `device` without surrounding white
    space), without the serializer's machinery; None for anything else, which the serializer
    then reads. NUL characters and lone surrogates, which its fields also refuse, never get
    here: `json_loads_strict` refuses them in any string."""
    if type(payload) is not dict or not payload.keys() <= _SIGN_FIELDS:
        return None
    data, no_hash = payload.get("data"), payload.get("no_hash", False)
    if type(data) is not str or not data.strip() or type(no_hash) is not bool:
        return None
    if "device" not in payload:
        return {"data": data, "no_hash": no_hash}
    device = payload["device"]
    if type(device) is not str or device != device.strip():
        return None
    return {"data": data, "no_hash": no_hash, "device": device}


def _body(body: bytes) -> dict[str, Any] | None:
    """The body as the view reads it (the API's strict JSON, SignRequestSerializer), or None."""
    try:
        payload = json_loads_strict(body.decode("utf-8"))
    except Exception:
        return None
    plain = _body_plain(payload)
    if plain is not None:
        return plain
    serializer = s.SignRequestSerializer(data=payload)
    if not isinstance(payload, dict) or not serializer.is_valid():
        return None
    return serializer.validated_data


def _checks(request, scheme: NativeScheme, body: bytes):
    """On a database thread, as `SignedAPIView._initial_checked` and the view's validation:
    - None (the lean handler answers; nothing was changed): the signature checks refuse the
      request, or they pass and its body is not one the view accepts (read only now, for a
      caller who proved to hold a secret), or the nonce was used before;
    - an exception to answer (the nonce was claimed, or whether it was is not known: the
      nonce store could not be reached): the scope, the rate limit, the database;
    - else (the client, the validated body).
    Anything unexpected after the claim is raised: this path answers it (500)."""
    try:
        verified = scheme.verify(request)
        data = _body(body)
    except Exception:
        return None
    if data is None:
        return None
    try:
        client = scheme.claim(request, verified)
    except ApiError as error:
        return error if error.code == "NONCE_STORE_UNAVAILABLE" else None
    try:
        scopes_require(client, _SCOPES)
        allowed, wait = rate_limit_count(access_key=client.key, limit=client.access.rate_limit_per_minute)
    except ApiError as error:
        return error
    if not allowed:
        return as_api_error(Throttled(wait))
    audit_writable_prove(nonce_claimed=True)
    return client, data


def _response(request, body: dict[str, Any], status: int, extra: dict[str, str], device: str | None) -> HttpResponse:
    """The answer as the view and the lean handler's middlewares would give it."""
    content = _renderer.render(body)
    response = HttpResponse(content, status=status, content_type="application/json")
    for name, value in extra.items():
        if name.lower() != "content-type":
            response[name] = value
    if device:
        response[CARD_HEADER] = device
    for name, value in _VIEW_HEADERS.items():
        response[name] = value
    response["X-Request-ID"] = request.request_id
    response = _security.process_response(request, response)
    response = _frame.process_response(request, response)
    response["Content-Length"] = str(len(content))
    return response


def _replay(body: bytes, more: bool, receive):
    """`receive` that first gives back the body already read."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replayed
