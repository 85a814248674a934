"""Request id (every response carries X-Request-ID, every log line of the request too), the
Host check of API paths, and the security headers of HTML pages."""

from __future__ import annotations

import uuid

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware

from core.errors import chinese_var, prefers_chinese
from core.logging import request_id_var


class _Middleware:
    """Sync and async alike: subclasses say what happens before (`request_start`, which may
    return a token) and after (`response_end`) the rest of the chain."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def request_start(self, request):
        return None

    def request_end(self, request, token) -> None:
        pass

    def response_end(self, request, response):
        return response

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        token = self.request_start(request)
        try:
            response = self.get_response(request)
        finally:
            self.request_end(request, token)
        return self.response_end(request, response)

    async def __acall__(self, request):
        token = self.request_start(request)
        try:
            response = await self.get_response(request)
        finally:
            self.request_end(request, token)
        return self.response_end(request, response)


class RequestIdMiddleware(_Middleware):
    """Assigns a UUID to each request (`request.request_id`) and notes whether its errors are
    answered in Chinese (Accept-Language, docs/signing-api.md §3)."""

    def request_start(self, request):
        request.request_id = str(uuid.uuid4())
        language = request.META.get("HTTP_ACCEPT_LANGUAGE")
        return (request_id_var.set(request.request_id),
                chinese_var.set(prefers_chinese(language[:200])) if language else None)

    def request_end(self, request, token) -> None:
        request_id_var.reset(token[0])
        if token[1] is not None:
            chinese_var.reset(token[1])

    def response_end(self, request, response):
        response["X-Request-ID"] = request.request_id
        return response


class SecurityHeadersMiddleware(_Middleware):
    """Content-Security-Policy (settings.CONTENT_SECURITY_POLICY) on every HTML page, the
    admin's above all: no script or style from another site, no inline script."""

    def response_end(self, request, response):
        policy = settings.CONTENT_SECURITY_POLICY
        if policy and response.get("Content-Type", "").startswith("text/html"):
            response.headers.setdefault("Content-Security-Policy", policy)
        return response


# The paths machines call: the native API and the legacy sign-server endpoints.
API_PATHS = ("/api/", "/getCode", "/xml-files/", "/health", "/rpc", "/acs/")


class ApiHostMiddleware(_Middleware):
    """A Host header outside DJANGO_ALLOWED_HOSTS on an API path: Django would answer with its
    HTML 400 page and no audit event. Here the request goes on, marked `refused_host`, under
    an allowed host, and the API view refuses it in its own error shape (and audits it).
    Admin pages keep Django's check. Place before CommonMiddleware."""

    def request_start(self, request):
        if not request.path.startswith(API_PATHS):
            return None
        try:
            request.get_host()
        except DisallowedHost:
            request.refused_host = request.META.get("HTTP_HOST", "")[:100]
            request.META["HTTP_HOST"] = next(
                (h for h in settings.ALLOWED_HOSTS if "*" not in h and not h.startswith(".")), "localhost")
        return None


class _InlineMixinMiddleware(_Middleware):
    """One of Django's `MiddlewareMixin` middlewares whose hooks do no I/O, called inline in
    async mode (Django would run each hook through `sync_to_async`, a thread hop)."""

    wrapped: type

    def __init__(self, get_response):
        super().__init__(get_response)
        self.inner = self.wrapped(get_response)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        return self.inner(request)

    async def __acall__(self, request):
        response = self.inner.process_request(request)
        if response is None:
            response = await self.get_response(request)
        return self.inner.process_response(request, response)


class InlineSecurityMiddleware(_InlineMixinMiddleware):
    """Django's SecurityMiddleware (HTTPS redirect, HSTS, nosniff, referrer and opener policies)."""

    wrapped = SecurityMiddleware


class InlineXFrameOptionsMiddleware(_InlineMixinMiddleware):
    """Django's XFrameOptionsMiddleware (X-Frame-Options)."""

    wrapped = XFrameOptionsMiddleware

    async def __acall__(self, request):
        return self.inner.process_response(request, await self.get_response(request))
