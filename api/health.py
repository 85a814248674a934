"""Health endpoints: native (`/api/v1/health`) and legacy sign-server (`/health`)."""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.http import require_GET
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.response import Response

from signing.selectors import card_device_states


class _DeviceHealthSerializer(serializers.Serializer):
    slug = serializers.CharField()
    connected = serializers.BooleanField()
    last_ok_at = serializers.DateTimeField(allow_null=True)
    queue_depth = serializers.IntegerField()
    cert_no = serializers.CharField(allow_null=True)
    algorithm = serializers.CharField(allow_null=True)
    last_error = serializers.CharField(allow_blank=True)


class _HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "degraded", "down"])
    devices = _DeviceHealthSerializer(many=True)


@extend_schema(responses={200: _HealthSerializer, 503: _HealthSerializer}, auth=[])
@api_view(["GET"])
@authentication_classes([])
@permission_classes([])
def health(request):
    """`{"status": ok|degraded|down, "devices": [...]}`; 503 when no card can sign. No signature needed."""
    states = card_device_states()
    connected = sum(1 for s in states if s["connected"])
    if states and connected == len(states):
        overall = "ok"
    elif connected:
        overall = "degraded"
    else:
        overall = "down"
    devices = [
        {k: s[k] for k in ("slug", "connected", "last_ok_at", "queue_depth", "cert_no", "algorithm", "last_error")}
        for s in states
    ]
    return Response({"status": overall, "devices": devices}, status=200 if connected else 503)


@require_GET
def legacy_health(request):
    """The sign-server's health answer, reporting the card's real state."""
    if any(s["connected"] for s in card_device_states()):
        return JsonResponse(
            {"code": 200, "msg": "服务运行正常", "data": True, "sign_status": "healthy"},
            json_dumps_params={"ensure_ascii": False},
        )
    return JsonResponse(
        {"code": 503, "msg": "签名服务不可用", "data": False, "sign_status": "unhealthy"},
        status=503,
        json_dumps_params={"ensure_ascii": False},
    )
