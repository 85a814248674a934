"""Health endpoints: native (`/api/v1/health`) and legacy sign-server (`/health`)."""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.http import require_GET
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.response import Response

from core.errors import not_found
from signing.selectors import card_device_states, card_pool_states


class _DeviceHealthSerializer(serializers.Serializer):
    slug = serializers.CharField()
    connected = serializers.BooleanField()
    last_ok_at = serializers.DateTimeField(allow_null=True)
    queue_depth = serializers.IntegerField()
    cert_no = serializers.CharField(allow_null=True)
    algorithm = serializers.CharField(allow_null=True)
    last_error = serializers.CharField(allow_blank=True)


class _PoolCardSerializer(serializers.Serializer):
    slug = serializers.CharField()
    up = serializers.BooleanField()
    reason = serializers.CharField(allow_blank=True, help_text="Why the card is not used (empty when up).")


class _PoolHealthSerializer(serializers.Serializer):
    slug = serializers.CharField()
    up = serializers.IntegerField(help_text="Cards of the pool that can sign now.")
    size = serializers.IntegerField(help_text="Enabled cards in the pool.")
    enterprise = serializers.CharField(allow_null=True)
    cards = _PoolCardSerializer(many=True)


class _HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "degraded", "down"])
    devices = _DeviceHealthSerializer(many=True)
    pools = _PoolHealthSerializer(many=True)


@extend_schema(responses={200: _HealthSerializer, 503: _HealthSerializer}, auth=[])
@api_view(["GET"])
@authentication_classes([])
@permission_classes([])
def health(request):
    """`{"status": ok|degraded|down, "devices": [...], "pools": [...]}`; 503 when no card can sign
    (`?device=SLUG`: when that card, or no card of that pool, can sign). No signature needed."""
    states = card_device_states()
    pools = [{k: p[k] for k in ("slug", "up", "size", "enterprise", "cards")} for p in card_pool_states()]
    connected = sum(1 for s in states if s["connected"])
    if states and connected == len(states) and all(p["up"] == p["size"] for p in pools):
        overall = "ok"
    elif connected:
        overall = "degraded"
    else:
        overall = "down"
    devices = [
        {k: s[k] for k in ("slug", "connected", "last_ok_at", "queue_depth", "cert_no", "algorithm", "last_error")}
        for s in states
    ]
    body = {"status": overall, "devices": devices, "pools": pools}
    wanted = request.query_params.get("device")
    if wanted:
        one = [d for d in devices if d["slug"] == wanted]
        pool = [p for p in pools if p["slug"] == wanted]
        if not one and not pool:
            raise not_found(f"no enabled card device or pool {wanted[:60]!r}")
        can_sign = one[0]["connected"] if one else pool[0]["up"] > 0
        return Response(body, status=200 if can_sign else 503)
    return Response(body, status=200 if connected else 503)


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
