"""The DRF authentication of every signed `/api/v1/` endpoint: the request's scheme
(api/schemes.py: native HMAC or a client profile) runs checks 1–5 of docs/signing-api.md;
scopes and the rate limit (check 6) are the view's permission and throttle classes."""

from __future__ import annotations

from django.conf import settings
from rest_framework.authentication import BaseAuthentication

from core.errors import AUTH_SCHEME, payload_too_large
from core.networks import address_allowed, client_address  # noqa: F401  (re-exported)

from .schemes import ApiClient, scheme_for, signature_compute  # noqa: F401  (re-exported)


class RequestAuthentication(BaseAuthentication):
    """Find the request's scheme, then let it authenticate the request. The scheme stays on
    the request (`auth_scheme`): refusals take its shape, the audit event its name."""

    scheme = None  # set by an endpoint that speaks one scheme only (the access system's)

    def authenticate_header(self, request) -> str:
        return AUTH_SCHEME

    def authenticate(self, request):
        django_request = request._request
        scheme = self.scheme or scheme_for(django_request)
        django_request.auth_scheme = scheme
        # The body limit first: nothing below should read an oversized body.
        length = django_request.META.get("CONTENT_LENGTH") or "0"
        if length.isdigit() and int(length) > settings.API_MAX_BODY_BYTES:
            raise payload_too_large(settings.API_MAX_BODY_BYTES)
        client = scheme.authenticate(django_request)
        return client, client.secret_version
