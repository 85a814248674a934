"""Input and output shapes of the signing endpoints (they also generate the OpenAPI schema)."""

from __future__ import annotations

from rest_framework import serializers


class SignRequestSerializer(serializers.Serializer):
    data = serializers.CharField(trim_whitespace=False, help_text="The text to sign (UTF-8).")
    no_hash = serializers.BooleanField(
        default=False, help_text="Send the hex SHA-1 of `data` to SpcSignDataNoHashAsPEM instead of the text."
    )
    device = serializers.CharField(required=False, allow_blank=True, help_text="Card device slug (optional).")


class SignResponseSerializer(serializers.Serializer):
    signature = serializers.CharField(help_text="Base64 signature (RSA-SHA1: 172 chars; SM2-SM3 raw r||s: 88 chars).")
    cert_no = serializers.CharField()
    algorithm = serializers.ChoiceField(choices=["RSA-SHA1", "SM2-SM3"])
    device = serializers.CharField()
    request_id = serializers.CharField()


class RpcRequestSerializer(serializers.Serializer):
    _method = serializers.CharField(help_text="A card method allowed for this access ID, e.g. cus-sec_SpcGetCertNo.")
    args = serializers.DictField(required=False, default=dict, help_text="The method's args; `passwd` is dropped.")
    device = serializers.CharField(required=False, allow_blank=True)


class CardArgsSerializer(serializers.Serializer):
    Result = serializers.BooleanField()
    Data = serializers.ListField(child=serializers.JSONField())
    Error = serializers.ListField(child=serializers.CharField())


class RpcResponseSerializer(serializers.Serializer):
    _method = serializers.CharField()
    _status = serializers.CharField()
    _args = CardArgsSerializer()


class CertificateResponseSerializer(serializers.Serializer):
    cert_no = serializers.CharField()
    algorithm = serializers.CharField()
    certificate_pem = serializers.CharField()
    subject = serializers.CharField()
    not_before = serializers.DateTimeField()
    not_after = serializers.DateTimeField()
    ent_name = serializers.CharField(allow_blank=True)
    device = serializers.CharField()


class RotateRequestSerializer(serializers.Serializer):
    grace_seconds = serializers.IntegerField(
        default=86400, min_value=0, max_value=7 * 86400,
        help_text="How long the current secret stays valid (0: revoked now). Default 24 h, at most 7 days.",
    )


class RotateResponseSerializer(serializers.Serializer):
    access_id = serializers.CharField()
    secret = serializers.CharField(help_text="The new App Secret; shown only in this response.")
    secret_version = serializers.IntegerField()
    previous_valid_until = serializers.DateTimeField(allow_null=True)


class ErrorSerializer(serializers.Serializer):
    success = serializers.BooleanField(default=False)
    code = serializers.CharField()
    message = serializers.CharField()
    request_id = serializers.CharField()
    details = serializers.DictField(required=False)
