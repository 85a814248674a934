"""`SignedAPIView`: the base of every `/api/v1/` endpoint.

Async end to end (a sync view under ASGI runs on one shared thread and would serialise
the card calls). Authentication, scope and rate-limit checks run in DRF's usual
`initial()`; the view's handler awaits the card; then exactly one audit event is written
for the request, whatever its outcome. If the event cannot be written, the request is
reported as failed (nothing is answered as a success without its audit record)."""

from __future__ import annotations

import inspect
import logging
import re
import time
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.http import HttpResponse
from django.template.response import SimpleTemplateResponse
from rest_framework import exceptions
from rest_framework.views import APIView

from accessids.services import access_id_mark_used
from audit.models import AuditEvent
from audit.services import audit_event_record, audit_events_record
from core.dbthread import DbBatch, db_sync_to_async
from core.errors import ApiError, error_response, invalid_request, not_found
from core.networks import client_address
from signing.pools import card_trace_audit

from .auth import RequestAuthentication
from .errors import as_api_error
from .permissions import AccessIdRateThrottle, HasScope

logger = logging.getLogger(__name__)

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def _secret_use_mark(fields: dict[str, Any]) -> None:
    if fields.get("access_id") and fields.get("secret_version"):
        access_id_mark_used(access_pk=fields["access_id"], version=fields["secret_version"])


def request_audit_write(fields: dict[str, Any]) -> None:
    """A request's one audit event (`audit_event_record` fields), and which secret version
    it used. Call inside a transaction."""
    audit_event_record(**fields)
    _secret_use_mark(fields)


def _audit_flush(batch: list[dict[str, Any]]) -> list[Exception | None]:
    """The events of many requests in one transaction (group commit, `audit_batch`). If that
    fails, each event is written on its own, so one event that cannot be stored fails only
    its own request."""
    try:
        with transaction.atomic():
            audit_events_record(events=batch)
            for fields in batch:
                _secret_use_mark(fields)
        return [None] * len(batch)
    except Exception:
        if len(batch) == 1:
            raise
        logger.warning("a batch of %d audit events could not be written; writing them one by one", len(batch))
    results: list[Exception | None] = []
    for fields in batch:
        try:
            with transaction.atomic():
                request_audit_write(fields)
            results.append(None)
        except Exception as exc:
            results.append(exc)
    return results


def rendered(response):
    """A DRF response rendered here, handed on as a plain `HttpResponse`: Django renders a
    template response (DRF's is one) through `sync_to_async`, a thread hop per request. Its
    `data` and `exception` stay readable."""
    if not isinstance(response, SimpleTemplateResponse):
        return response
    response.render()
    plain = HttpResponse(response.content, status=response.status_code)
    for name, value in response.headers.items():
        plain.headers[name] = value
    plain.cookies = response.cookies
    plain.data = getattr(response, "data", None)
    plain.exception = getattr(response, "exception", False)
    return plain


def database_usable_prove() -> None:
    """Proof, on a database thread, that its connection works now (raises if not). Taking
    the cursor runs Django's health check (CONN_HEALTH_CHECKS, once per job: `core.dbthread`
    resets it before each) or opens a new connection, either of which is the proof; a SELECT 1
    only when health checks are off. (A SELECT 1 after the health check's own was one more
    round trip per request with PostgreSQL.)"""
    with connection.cursor() as cursor:
        if not (connection.health_check_enabled and connection.health_check_done):
            cursor.execute("SELECT 1")


def audit_writable_prove(*, nonce_claimed: bool) -> None:
    """Proof, before the card is called, that the request's audit event can be written. A
    nonce claimed in the database (NONCE_STORE "database") was a write to it already;
    anything else takes `database_usable_prove`."""
    if nonce_claimed and settings.NONCE_STORE == "database":
        return
    database_usable_prove()


# The answers' audit events: each answer waits until its event is committed (durable), but
# the events of concurrent requests share one transaction and one lock of the chain.
audit_batch = DbBatch(_audit_flush, name="audit")


class SignedAPIView(APIView):
    authentication_classes = [RequestAuthentication]
    permission_classes = [HasScope]
    throttle_classes = [AccessIdRateThrottle]
    required_scopes: tuple[str, ...] | dict[str, tuple[str, ...]] = ()

    async def dispatch(self, request, *args, **kwargs):
        started = time.perf_counter()
        self.args, self.kwargs = args, kwargs
        request.audit = {}
        request.audit_started = started
        drf_request = self.initialize_request(request, *args, **kwargs)
        self.request = drf_request
        self.headers = self.default_response_headers
        try:
            if getattr(request, "refused_host", None) is not None:
                raise invalid_request(f"the Host header {request.refused_host!r} is not one this platform serves "
                                      "(DJANGO_ALLOWED_HOSTS)", {"Host": ["not allowed"]})
            if _CONTROL_CHARS.search(request.path):
                raise invalid_request("the path contains a control character (e.g. %00)", {"path": ["invalid"]})
            request.auth_stage = True  # refusals until the handler runs take the scheme's shape
            await db_sync_to_async(self._initial_checked)(drf_request, *args, **kwargs)
            request.auth_stage = False
            method = request.method.lower()
            handler = getattr(self, method, None) if method in self.http_method_names else None
            if handler is None:
                raise exceptions.MethodNotAllowed(request.method)
            response = handler(drf_request, *args, **kwargs)
            if inspect.isawaitable(response):  # DRF's own OPTIONS handler is synchronous
                response = await response
        except Exception as exc:
            response = self.handle_exception(exc)
        response = self.finalize_response(drf_request, response, *args, **kwargs)
        if not getattr(request, "audit_recorded", False):
            try:
                fields = self.audit_fields_for(request, status_code=response.status_code,
                                               data=getattr(response, "data", None), started=started)
                await audit_batch.submit(fields)
            except Exception:
                logger.exception("the audit event of this request could not be written")
                failure = ApiError("INTERNAL_ERROR", "the request could not be recorded in the audit log", status=500)
                response = self.finalize_response(drf_request, error_response(failure, request.request_id))
        return rendered(response)

    def _initial_checked(self, request, *args, **kwargs) -> None:
        """DRF's checks, then proof that this request's audit event can be written: a
        request is refused before the card is called, never after (the event is written
        once the answer is known)."""
        self.initial(request, *args, **kwargs)
        audit_writable_prove(nonce_claimed=getattr(request._request, "auth_scheme", None) is not None)

    def handle_exception(self, exc):
        # No DRF 401→403 coercion: every error takes the spec's shape in one place. A
        # request refused before its handler ran (authentication, scope, rate limit) is
        # answered in its scheme's shape, and audited with the native code.
        django_request = self.request._request
        scheme = getattr(django_request, "auth_scheme", None)
        if scheme is not None and scheme.kind is not None and getattr(django_request, "auth_stage", False):
            error = as_api_error(exc)
            django_request.audit_error = (error.code, error.message)
            response = scheme.refuse(error, django_request.request_id)
        else:
            response = self.get_exception_handler()(exc, self.get_exception_handler_context())
        response.exception = True
        return response

    @staticmethod
    def audit_fields_for(request, *, status_code: int, data: Any, started: float) -> dict[str, Any]:
        """The audit event's columns for this request and its answer (`data`: the error body)."""
        failed = status_code >= 400
        code = data.get("code") if failed and isinstance(data, dict) else None
        message = data.get("message", "") if failed and isinstance(data, dict) else ""
        if failed and getattr(request, "audit_error", None):  # refused in a profile's shape
            code, message = request.audit_error
        scheme = getattr(request, "auth_scheme", None)
        fields = {
            "event_type": AuditEvent.API_REQUEST,
            "source": "api",
            "profile": scheme.name if scheme is not None else "",
            "request_id": request.request_id,
            "access_key": getattr(request, "claimed_access_key", "") or request.headers.get("X-Access-Id", "")[:64],
            "access_id": getattr(request, "access_pk", None),
            "endpoint": f"{request.method} {request.path}"[:200],
            "outcome": (code or "ERROR") if failed else AuditEvent.OK,
            "http_status": status_code,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "client_ip": client_address(request),
            "secret_version": getattr(request, "secret_version", None),
            "message": message,
        }
        fields.update(getattr(request, "audit", {}))
        return card_trace_audit(getattr(request, "card_trace", {}), fields)

    def commit_with_audit(self, request, write, *, status_code: int = 200):
        """Run `write()` (a database change) and this request's audit event in one
        transaction, so the change never exists without its event. Call from a DB thread;
        `write` may add to `request.audit`. Returns what `write` returned."""
        django_request = request._request
        with transaction.atomic():
            result = write()
            self._audit_write(django_request, status_code=status_code, data=None, started=django_request.audit_started)
            django_request.audit_recorded = True
        return result

    def _audit_write(self, request, *, status_code: int, data: Any, started: float) -> None:
        """The request's one audit event, and which secret version it used."""
        request_audit_write(self.audit_fields_for(request, status_code=status_code, data=data, started=started))


class ApiNotFoundView(SignedAPIView):
    """Any other path under /api/v1/: 404 NOT_FOUND in the spec's shape (audited)."""

    authentication_classes = []
    permission_classes = []
    throttle_classes = []
    schema = None

    async def _not_found(self, request, *args, **kwargs):
        raise not_found(f"no endpoint {request.method} {request.path}")

    get = post = put = patch = delete = _not_found
