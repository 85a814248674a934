"""The signed `/api/v1/` endpoints (docs/signing-api.md §5). Thin: validate the
input, call a service, shape the output; errors are raised, never returned."""

from __future__ import annotations

import asyncio
import datetime

from django.db import transaction
from django.utils.translation import gettext_lazy
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response

from accessids.models import AccessId
from accessids.profiles import CP_MD5
from accessids.services import ChangeContext, access_id_mark_used, app_secret_rotate
from audit.models import AuditEvent
from audit.services import data_digest
from core.ceb import XmlInputError, ceb_verify
from core.dbthread import db_sync_to_async
from core.errors import invalid_request, permission_denied, xml_input_error
from signing.pools import CARD_HEADER, card_target_for, card_target_run
from signing.services import (
    card_rpc,
    card_signature_method_override_recent,
    ceb_xml_sign,
    certificate_get,
    data_sign,
    pay179_sign,
    xml_work_slot,
)
from ukey.client import UKeyCardError
from ukey.protocol import REPEATABLE_METHODS, RPC_METHODS, SIGN_METHODS, rpc_args_problems
from xmlstore.services import XmlSignature, xml_directory_clean, xml_document_write, xml_filename_clean

from . import serializers as s
from .base import SignedAPIView
from .errors import as_api_error

ERRORS = {code: s.ErrorSerializer for code in (400, 401, 403, 409, 413, 429, 502, 503, 504)}


async def _on_card(request, requested: str | None, operation, *, repeatable: bool = True):
    """Run `operation(card)` on the card or pool the request names (else the access ID's
    default); the audit event and the X-Card-Device header name the card that was used."""
    request._request.card_trace = trace = {}  # where the audit event is written from
    access = request.user.access
    target = await card_target_for(devices=access.devices, pools=access.pools, requested=requested)
    result = await card_target_run(target, operation, repeatable=repeatable, trace=trace)
    return result, trace["device"]


def _pool_named(request) -> dict:
    """`{"pool": slug}` when the card was chosen from a pool (answers name it only then)."""
    pool = request.card_trace.get("pool")
    return {"pool": pool} if pool else {}


def _named(response: Response, device: str) -> Response:
    response[CARD_HEADER] = device
    return response


class SignView(SignedAPIView):
    required_scopes = ("sign",)

    @extend_schema(
        request=s.SignRequestSerializer, responses={200: s.SignResponseSerializer, **ERRORS},
        description=gettext_lazy(
            "Sign `data` (UTF-8 text) with the card: SpcSignDataAsPEM, or with `no_hash` the hex SHA-1 of the "
            "text through SpcSignDataNoHashAsPEM. The answer has the base64 signature, the certNo and "
            "algorithm of the card that signed, and its device (and pool). Every signature is verified with the "
            "card's certificate before it is handed out. Scope `sign`."),
    )
    async def post(self, request):
        serializer = s.SignRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data["data"]
        request.audit["data_sha256"] = data_digest(data)
        no_hash = serializer.validated_data["no_hash"]
        result, device = await _on_card(request, serializer.validated_data.get("device"),
                                        lambda card: data_sign(data=data, no_hash=no_hash, device=card))
        request.audit["cert_no"] = result.cert_no
        return _named(Response(
            {
                "signature": result.signature,
                "cert_no": result.cert_no,
                "algorithm": result.algorithm,
                "device": result.device,
                **_pool_named(request),
                "request_id": request.request_id,
            }
        ), device)


class RpcView(SignedAPIView):
    """A card method. Native answers: the card's envelope, a refusal as 502 UKEY_ERROR. In
    the chinaport-proxy shape (`POST /rpc` at the root, or any request of the cp-md5
    profile): a refusal is 400 with the envelope (`Result: false`), other errors
    `{"error": ...}` with their status (503 without a card, 400 for a bad body)."""

    required_scopes = ("rpc",)
    proxy_shape = False

    def _proxy(self, request) -> bool:
        # `_user`, not `user`: reading `user` would run authentication (again, or in the
        # middle of an error raised before it).
        return self.proxy_shape or getattr(getattr(request, "_user", None), "profile", None) == CP_MD5

    def operation_permission_check(self, request, client) -> None:
        method = request.data.get("_method") if isinstance(request.data, dict) else None
        if not isinstance(method, str) and self._proxy(request):
            return  # the proxy answers a malformed body with 400 (the serializer says why)
        if method and (method not in RPC_METHODS or method not in client.access.allowed_methods):
            raise permission_denied(f"card method {method!r} is not allowed for this access ID")

    def handle_exception(self, exc):
        django_request = self.request._request
        if getattr(django_request, "auth_stage", False) or not self._proxy(self.request):
            return super().handle_exception(exc)
        error = as_api_error(exc)
        django_request.audit_error = (error.code, error.message)
        envelope = getattr(exc, "envelope", None)
        if isinstance(exc, UKeyCardError) and envelope:  # the card answered Result:false
            response = Response(envelope, status=400)
        else:
            response = Response({"error": error.message}, status=error.status_code, headers=error.headers)
        response.exception = True
        return response

    @extend_schema(request=s.RpcRequestSerializer, responses={200: s.RpcResponseSerializer, **ERRORS})
    async def post(self, request):
        serializer = s.RpcRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        method, args = serializer.validated_data["_method"], serializer.validated_data["args"]
        request.audit["details"] = {"method": method}
        if problems := rpc_args_problems(method, args):
            raise invalid_request(f"args for {method} are not valid", {f"args.{k}": [v] for k, v in problems.items()})
        if isinstance(args.get("inData"), str):
            request.audit["data_sha256"] = data_digest(args["inData"])
        envelope, device = await _on_card(request, serializer.validated_data.get("device"),
                                          lambda card: card_rpc(method=method, args=args, device=card),
                                          repeatable=method in REPEATABLE_METHODS)
        if method in SIGN_METHODS:
            data = envelope["_args"]["Data"]
            request.audit["cert_no"] = str(data[1]) if len(data) > 1 else ""
        return _named(Response(envelope), device)


class ProxyRpcView(RpcView):
    """`POST /rpc` at the root: the chinaport-proxy's endpoint (docs/client-profiles.md)."""

    proxy_shape = True


class CertificateView(SignedAPIView):
    @extend_schema(
        description=gettext_lazy(
            "The card's signing certificate (PEM) with its certNo, algorithm, subject, validity and enterprise "
            "name, read from the card through the gateway. Any access ID may ask (no scope needed)."),
        parameters=[OpenApiParameter("device", str, description="Card device slug (optional).")],
        responses={200: s.CertificateResponseSerializer, **ERRORS},
    )
    async def get(self, request):
        result, device = await _on_card(request, request.query_params.get("device"),
                                        lambda card: certificate_get(device=card))
        request.audit["cert_no"] = result["cert_no"]
        return _named(Response({**result, **_pool_named(request)}), device)


class RotateSelfView(SignedAPIView):
    required_scopes = ("rotate_self",)
    request_line_bound = ("POST",)  # not through a profile whose signature leaves out method and path

    @extend_schema(
        request=s.RotateRequestSerializer, responses={200: s.RotateResponseSerializer, **ERRORS},
        description=gettext_lazy(
            "Issue a new App Secret for the calling access ID and answer it once. The secret this request was "
            "signed with stays valid for `grace_seconds` (at most 7 days; 0 revokes it at once). Scope "
            "`rotate_self`; an administrator rotates in the admin or with `manage.py accessid rotate`."),
    )
    async def post(self, request):
        serializer = s.RotateRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        grace = datetime.timedelta(seconds=serializer.validated_data["grace_seconds"])
        body = await db_sync_to_async(self._rotate)(request, grace)
        response = Response(body)
        response["Cache-Control"] = "no-store"
        return response

    def _rotate(self, request, grace: datetime.timedelta) -> dict:
        """The rotation and this request's audit event, in one transaction."""
        context = ChangeContext.from_request(request._request, source="api")
        with transaction.atomic():
            access = AccessId.objects.get(pk=request.user.access.pk)
            row, secret = app_secret_rotate(
                access_id=access,
                grace=grace,
                context=context,
                outcome=AuditEvent.OK,
                http_status=200,
                secret_version=request.user.secret_version,
                profile=request.user.profile,
            )
            access_id_mark_used(access_pk=access.pk, version=request.user.secret_version)
            request._request.audit_recorded = True
        previous = row.previous
        return {
            "access_id": access.key,
            "secret": secret,
            "secret_version": row.version,
            "previous_valid_until": previous.valid_until.isoformat() if previous and previous.valid_until else None,
        }


class SignXmlView(SignedAPIView):
    """Sign a CEB message, verify the result, store original and signed text together."""

    required_scopes = ("sign_xml",)

    @extend_schema(request=s.SignXmlRequestSerializer, responses={200: s.SignXmlResponseSerializer, **ERRORS})
    async def post(self, request):
        serializer = s.SignXmlRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        values = serializer.validated_data
        xml = values["xml"]
        # Names are checked before the card is used: a bad name must not cost a signature.
        directory = xml_directory_clean(values.get("directory"))
        filename = xml_filename_clean(values["filename"]) if values.get("filename", "").strip() else ""
        request.audit["data_sha256"] = data_digest(xml)
        async def sign(card: str):
            override = await card_signature_method_override_recent(device=card)
            return await ceb_xml_sign(xml=xml, device=card, owner=request.user.key, signature_method=override)

        result, device = await _on_card(request, values.get("device"), sign)
        request.audit["cert_no"] = result.cert_no
        if not filename:
            stamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
            filename = f"{result.message_type}-{stamp}-{request.request_id[:8]}.xml"

        def store():
            document = xml_document_write(
                access_id=request.user.access.pk,
                directory=directory,
                filename=filename,
                content=result.signed_xml,
                request_id=request.request_id,
                source="api",
                message_type=result.message_type,
                signature=XmlSignature(
                    original_content=xml,
                    cert_no=result.cert_no,
                    signature_method=result.signature_method,
                    digest_value=result.digest_value,
                    signature_value=result.signature_value,
                    device=result.device,
                ),
                checked=True,
            )
            request.audit["details"] = {
                "document_id": document.pk, "path": document.path, "version": document.version,
                "digest_value": result.digest_value, "signed_sha256": document.sha256,
            }
            return document

        document = await db_sync_to_async(self.commit_with_audit)(request, store)
        return _named(Response(
            {
                "signed_xml": result.signed_xml,
                "digest_value": result.digest_value,
                "signature_value": result.signature_value,
                "signature_method": result.signature_method,
                "cert_no": result.cert_no,
                "algorithm": result.algorithm,
                "device": result.device,
                **_pool_named(request),
                "document_id": document.pk,
                "filename": document.filename,
                "directory": document.directory,
                "version": document.version,
                "request_id": request.request_id,
            }
        ), device)


class VerifyXmlView(SignedAPIView):
    """Check any signed CEB message: does the digest match, does the signature verify with
    the certificate inside, and if not, why. No card needed; the work shares the XML pool."""

    required_scopes = ("verify_xml",)

    @extend_schema(request=s.VerifyXmlRequestSerializer, responses={200: s.VerifyXmlResponseSerializer, **ERRORS})
    async def post(self, request):
        serializer = s.VerifyXmlRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        xml = serializer.validated_data["xml"]
        request.audit["data_sha256"] = data_digest(xml)
        try:
            async with xml_work_slot(request.user.key):
                result = await asyncio.to_thread(ceb_verify, xml)
        except XmlInputError as exc:
            raise xml_input_error(exc) from None
        certificate = result.certificate
        request.audit["cert_no"] = result.cert_no or ""
        request.audit["details"] = {"valid": result.valid, "reason": result.reason[:300]}
        return Response(
            {
                "valid": result.valid,
                "digest_ok": result.digest_ok,
                "signature_ok": result.signature_ok,
                "cert_no": result.cert_no or "",
                "reason": result.reason,
                "digest_value": result.digest_value or "",
                "signature_method": result.signature_method or "",
                "algorithm": result.algorithm or "",
                "certificate_subject": certificate.subject if certificate else "",
                "certificate_not_after": certificate.not_after.isoformat() if certificate else None,
            }
        )


class Sign179View(SignedAPIView):
    """Sign "179" payment data; optionally upload it to customs."""

    required_scopes = ("sign_179",)
    session_field = "sessionID"
    upload_field = "upload"

    @extend_schema(request=s.Pay179RequestSerializer, responses={200: s.Pay179ResponseSerializer, **ERRORS})
    async def post(self, request):
        data = request.data if isinstance(request.data, dict) else None
        if data is None:
            raise invalid_request("the body must be a JSON object")
        upload = data.get(self.upload_field, False)
        if not isinstance(upload, bool):
            raise invalid_request(f"{self.upload_field} must be true or false",
                                  {self.upload_field: ["must be a boolean"]})
        requested = data.get("device")
        if requested is not None and not isinstance(requested, str):
            raise invalid_request("device must be a string", {"device": ["must be a string"]})
        async def on_card(sign):
            return (await _on_card(request, requested or None, sign))[0]

        # The raw bytes, not request.data: numbers must keep the client's text (100 stays 100).
        result = await pay179_sign(raw_body=request._request.body, upload=upload, on_card=on_card,
                                   session_field=self.session_field, ignored=(self.upload_field,))
        request.audit["cert_no"] = result.cert_no
        request.audit["data_sha256"] = data_digest(result.sign_string)
        details = {"session_id": str(data.get(self.session_field, ""))[:100]}
        if result.upload is not None:
            details["upload"] = {k: result.upload[k] for k in ("ok", "http_status", "code", "error")}
            if not result.upload["ok"]:
                request.audit["message"] = f"signed; upload to customs failed: {result.upload['error'] or result.upload['code']}"
        request.audit["details"] = details
        body = {
            "sign_string": result.sign_string,
            "signature": result.signature,
            "cert_no": result.cert_no,
            "device": result.device,
            **_pool_named(request),
            "request_id": request.request_id,
        }
        if result.upload is not None:
            body["upload"] = result.upload
        return _named(Response(body), result.device)


class Customs179View(Sign179View):
    """`POST /api/customs179`: the chinaport-proxy's 179 endpoint. Its body names the session
    `sessionId` and asks for the upload with `realTimeDataUpload`; the answer is the native
    179 result (docs/client-profiles.md, cp-md5)."""

    session_field = "sessionId"
    upload_field = "realTimeDataUpload"
