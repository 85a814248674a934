"""The signed `/api/v1/` endpoints (shared/spec/signing-api.md §3). Thin: validate the
input, call a service, shape the output; errors are raised, never returned."""

from __future__ import annotations

import datetime
import hashlib

from django.db import transaction
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response

from accessids.models import AccessId
from accessids.services import ChangeContext, access_id_mark_used, app_secret_rotate
from audit.models import AuditEvent
from signplatform.dbthread import db_sync_to_async
from signplatform.errors import permission_denied
from signing.ukey.protocol import RPC_METHODS, SIGN_METHODS

from . import serializers as s
from .api import SignedAPIView
from .auth import client_address
from .services import card_rpc, certificate_get, data_sign, device_choose

ERRORS = {code: s.ErrorSerializer for code in (400, 401, 403, 409, 413, 429, 502, 503, 504)}


async def _device(request, requested: str | None) -> str:
    allowed = request.user.access.devices
    if requested:  # checked against the database
        device = await db_sync_to_async(device_choose)(allowed=allowed, requested=requested)
    else:  # no I/O: no thread hop on the common path
        device = device_choose(allowed=allowed, requested=None)
    request.audit["device"] = device
    return device


class SignView(SignedAPIView):
    required_scopes = ("sign",)

    @extend_schema(request=s.SignRequestSerializer, responses={200: s.SignResponseSerializer, **ERRORS})
    async def post(self, request):
        serializer = s.SignRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data["data"]
        request.audit["data_sha256"] = hashlib.sha256(data.encode("utf-8")).hexdigest()
        device = await _device(request, serializer.validated_data.get("device"))
        result = await data_sign(data=data, no_hash=serializer.validated_data["no_hash"], device=device)
        request.audit["cert_no"] = result.cert_no
        return Response(
            {
                "signature": result.signature,
                "cert_no": result.cert_no,
                "algorithm": result.algorithm,
                "device": result.device,
                "request_id": request.request_id,
            }
        )


class RpcView(SignedAPIView):
    required_scopes = ("rpc",)

    def operation_permission_check(self, request, client) -> None:
        method = request.data.get("_method") if isinstance(request.data, dict) else None
        if method and (method not in RPC_METHODS or method not in client.access.allowed_methods):
            raise permission_denied(f"card method {method!r} is not allowed for this access ID")

    @extend_schema(request=s.RpcRequestSerializer, responses={200: s.RpcResponseSerializer, **ERRORS})
    async def post(self, request):
        serializer = s.RpcRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        method, args = serializer.validated_data["_method"], serializer.validated_data["args"]
        request.audit["details"] = {"method": method}
        if isinstance(args.get("inData"), str):
            request.audit["data_sha256"] = hashlib.sha256(args["inData"].encode("utf-8")).hexdigest()
        device = await _device(request, serializer.validated_data.get("device"))
        envelope = await card_rpc(method=method, args=args, device=device)
        if method in SIGN_METHODS:
            data = envelope["_args"]["Data"]
            request.audit["cert_no"] = str(data[1]) if len(data) > 1 else ""
        return Response(envelope)


class CertificateView(SignedAPIView):
    @extend_schema(
        parameters=[OpenApiParameter("device", str, description="Card device slug (optional).")],
        responses={200: s.CertificateResponseSerializer, **ERRORS},
    )
    async def get(self, request):
        device = await _device(request, request.query_params.get("device"))
        result = await certificate_get(device=device)
        request.audit["cert_no"] = result["cert_no"]
        return Response(result)


class RotateSelfView(SignedAPIView):
    required_scopes = ("rotate_self",)

    @extend_schema(request=s.RotateRequestSerializer, responses={200: s.RotateResponseSerializer, **ERRORS})
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
        context = ChangeContext(
            source="api",
            request_id=request.request_id,
            client_ip=client_address(request._request),
            endpoint=f"{request.method} {request.path}",
        )
        with transaction.atomic():
            access = AccessId.objects.get(pk=request.user.access.pk)
            row, secret = app_secret_rotate(
                access_id=access,
                grace=grace,
                context=context,
                outcome=AuditEvent.OK,
                http_status=200,
                secret_version=request.user.secret_version,
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
