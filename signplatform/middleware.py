"""Request id (every response carries X-Request-ID, every log line of the request too) and
the security headers of HTML pages."""

from __future__ import annotations

import uuid

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import DisallowedHost

from core.logging import request_id_var


class RequestIdMiddleware:
    """Assigns a UUID to each request (`request.request_id`), works sync and async."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _start(self, request):
        request.request_id = str(uuid.uuid4())
        return request_id_var.set(request.request_id)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        token = self._start(request)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = request.request_id
        return response

    async def __acall__(self, request):
        token = self._start(request)
        try:
            response = await self.get_response(request)
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = request.request_id
        return response


class SecurityHeadersMiddleware:
    """Content-Security-Policy (settings.CONTENT_SECURITY_POLICY) on every HTML page, the
    admin's above all: no script or style from another site, no inline script."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.policy = settings.CONTENT_SECURITY_POLICY
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _add(self, response):
        if self.policy and response.get("Content-Type", "").startswith("text/html"):
            response.headers.setdefault("Content-Security-Policy", self.policy)
        return response

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        return self._add(self.get_response(request))

    async def __acall__(self, request):
        return self._add(await self.get_response(request))


# The paths machines call: the native API and the legacy sign-server endpoints.
API_PATHS = ("/api/", "/getCode", "/xml-files/", "/health")


class ApiHostMiddleware:
    """A Host header outside DJANGO_ALLOWED_HOSTS on an API path: Django would answer with its
    HTML 400 page and no audit event. Here the request goes on, marked `refused_host`, under
    an allowed host, and the API view refuses it in its own error shape (and audits it).
    Admin pages keep Django's check. Place before CommonMiddleware."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    @staticmethod
    def _check(request) -> None:
        if not request.path.startswith(API_PATHS):
            return
        try:
            request.get_host()
        except DisallowedHost:
            request.refused_host = request.META.get("HTTP_HOST", "")[:100]
            request.META["HTTP_HOST"] = next((h for h in settings.ALLOWED_HOSTS if "*" not in h and
                                              not h.startswith(".")), "localhost")

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        self._check(request)
        return self.get_response(request)

    async def __acall__(self, request):
        self._check(request)
        return await self.get_response(request)
