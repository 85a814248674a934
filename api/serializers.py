"""Input and output shapes of the signing endpoints (they also generate the OpenAPI schema)."""

from __future__ import annotations

import copy

from rest_framework import serializers
from rest_framework.validators import ProhibitSurrogateCharactersValidator

from .fields import StrictBooleanField, StrictCharField, StrictIntegerField, not_blank


class RequestSerializer(serializers.Serializer):
    """A request body's serializer whose fields are shallow copies of the declared ones: DRF
    deep-copies them for every instance, which runs each field's __init__ again, on every
    request. The declared fields are never bound or changed, so sharing what they hold
    (validators, a child field) is safe."""

    def get_fields(self):
        return {name: copy.copy(field) for name, field in self._declared_fields.items()}


class SignRequestSerializer(RequestSerializer):
    data = StrictCharField(trim_whitespace=False, validators=[not_blank],
                           help_text="The text to sign (UTF-8), not empty or only white space.")
    no_hash = StrictBooleanField(
        default=False, help_text="Send the hex SHA-1 of `data` to SpcSignDataNoHashAsPEM instead of the text."
    )
    device = StrictCharField(required=False, allow_blank=True, help_text="Card device or card pool slug (optional).")


class SignResponseSerializer(serializers.Serializer):
    signature = serializers.CharField(help_text="Base64 signature (RSA-SHA1: 172 chars; SM2-SM3 raw r||s: 88 chars).")
    cert_no = serializers.CharField()
    algorithm = serializers.ChoiceField(choices=["RSA-SHA1", "SM2-SM3"])
    device = serializers.CharField(help_text="The card that was used.")
    pool = serializers.CharField(required=False, help_text="The card pool it was chosen from (only when one was).")
    request_id = serializers.CharField()


class RpcRequestSerializer(RequestSerializer):
    _method = StrictCharField(help_text="A card method allowed for this access ID, e.g. cus-sec_SpcGetCertNo.")
    args = serializers.DictField(required=False, default=dict, help_text="The method's args; `passwd` is dropped.")
    device = StrictCharField(required=False, allow_blank=True)


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
    device = serializers.CharField(help_text="The card that was used.")
    pool = serializers.CharField(required=False, help_text="The card pool it was chosen from (only when one was).")


class RotateRequestSerializer(serializers.Serializer):
    grace_seconds = StrictIntegerField(
        default=86400, min_value=0, max_value=7 * 86400,
        help_text="How long the current secret stays valid (0: revoked now). Default 24 h, at most 7 days.",
    )


class RotateResponseSerializer(serializers.Serializer):
    access_id = serializers.CharField()
    secret = serializers.CharField(help_text="The new App Secret; shown only in this response.")
    secret_version = serializers.IntegerField()
    previous_valid_until = serializers.DateTimeField(allow_null=True)


class XmlTextField(StrictCharField):
    """XML text. Without DRF's per-character surrogate check (a pure-Python loop that costs
    ~40 ms per MB on the event loop): the XML parser refuses text that is not valid UTF-8."""

    def __init__(self, **kwargs):
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)
        self.validators = [v for v in self.validators if not isinstance(v, ProhibitSurrogateCharactersValidator)]


class SignXmlRequestSerializer(RequestSerializer):
    xml = XmlTextField(help_text="A CEB message (root ceb:CEB<nnn>Message), unsigned.")
    filename = StrictCharField(
        required=False, allow_blank=True, help_text="Store the signed document under this name (.xml added)."
    )
    directory = StrictCharField(required=False, allow_blank=True, help_text="Logical folder in the XML store.")
    device = StrictCharField(required=False, allow_blank=True, help_text="Card device or card pool slug (optional).")


class SignXmlResponseSerializer(serializers.Serializer):
    signed_xml = serializers.CharField()
    digest_value = serializers.CharField()
    signature_value = serializers.CharField()
    signature_method = serializers.CharField()
    cert_no = serializers.CharField()
    algorithm = serializers.CharField()
    device = serializers.CharField(help_text="The card that was used.")
    pool = serializers.CharField(required=False, help_text="The card pool it was chosen from (only when one was).")
    document_id = serializers.IntegerField()
    filename = serializers.CharField()
    directory = serializers.CharField(allow_blank=True)
    version = serializers.IntegerField()
    request_id = serializers.CharField()


class VerifyXmlRequestSerializer(RequestSerializer):
    xml = XmlTextField(help_text="A signed CEB message, signed anywhere.")


class VerifyXmlResponseSerializer(serializers.Serializer):
    valid = serializers.BooleanField()
    digest_ok = serializers.BooleanField()
    signature_ok = serializers.BooleanField()
    cert_no = serializers.CharField(allow_blank=True)
    reason = serializers.CharField(allow_blank=True)
    digest_value = serializers.CharField(allow_blank=True)
    signature_method = serializers.CharField(allow_blank=True)
    algorithm = serializers.CharField(allow_blank=True)
    certificate_subject = serializers.CharField(allow_blank=True)
    certificate_not_after = serializers.DateTimeField(allow_null=True)


class Pay179RequestSerializer(serializers.Serializer):
    """Documents the body; the view reads the raw bytes so numbers keep their text."""

    sessionID = serializers.CharField()
    payExchangeInfoHead = serializers.DictField()
    payExchangeInfoLists = serializers.ListField(child=serializers.DictField())
    serviceTime = serializers.JSONField(help_text="Milliseconds, as a number or a digit string.")
    upload = serializers.BooleanField(default=False, help_text="Also post the signed data to customs.")
    device = serializers.CharField(required=False, allow_blank=True)


class Pay179UploadSerializer(serializers.Serializer):
    ok = serializers.BooleanField(help_text='True only when customs answered code "10000".')
    url = serializers.CharField()
    http_status = serializers.IntegerField(allow_null=True)
    code = serializers.CharField(allow_blank=True)
    message = serializers.CharField(allow_blank=True)
    reply = serializers.JSONField(allow_null=True)
    error = serializers.CharField(allow_blank=True)
    duration_ms = serializers.FloatField()


class Pay179ResponseSerializer(serializers.Serializer):
    sign_string = serializers.CharField()
    signature = serializers.CharField()
    cert_no = serializers.CharField()
    device = serializers.CharField(help_text="The card that was used.")
    pool = serializers.CharField(required=False, help_text="The card pool it was chosen from (only when one was).")
    request_id = serializers.CharField()
    upload = Pay179UploadSerializer(required=False)


class ErrorSerializer(serializers.Serializer):
    success = serializers.BooleanField(default=False)
    code = serializers.CharField()
    message = serializers.CharField()
    request_id = serializers.CharField()
    details = serializers.DictField(required=False)
