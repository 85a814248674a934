"""The ASGI handler of the paths machines call (the signed API, the client profiles' and the
sign-server's endpoints): Django's handler with a lean middleware chain, no thread hop of its own.

Django's full handler costs a signed request about 20 thread hops: each synchronous
middleware (sessions, CSRF, authentication, messages, security, common, clickjacking) runs
`process_request`/`process_response` through `sync_to_async`, the request signals are sent
through it too, and every request gets a new thread of its own (`ThreadSensitiveContext`).
The API needs none of sessions, CSRF, user authentication or messages (it authenticates
every request by its signature), so here:
- the middleware chain is `settings.API_MIDDLEWARE`, every one of them async-capable (the
  security and clickjacking headers are Django's own middlewares called inline: their hooks
  do no I/O);
- the request signals are not sent: their receivers close stale database connections of the
  thread that runs the view, and every view here is asynchronous, its database work done on
  `core.dbthread`'s threads, which check their connections before each job (the health
  endpoints, synchronous views, stay on the full handler);
- the view runs to its end even when the client goes away, so its one audit event is always
  written (Django would cancel it half-way);
- English is the active language, whatever `DJANGO_LANGUAGE_CODE` is (the admin's default):
  answers to machines do not change with it.

Everything else (request parsing, body limits, URL resolution, views, exception handling)
is Django's own. The admin, the API documentation pages and anything else stay on the full
handler (`signplatform/asgi.py` routes by path)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.urls import set_script_prefix
from django.utils import translation

logger = logging.getLogger(__name__)

# Served by the lean handler: the paths machines call. The OpenAPI document and the Swagger
# UI under /api/v1/ are pages for people (CSP, clickjacking headers of the full chain).
LEAN_PREFIXES = ("/api/", "/getCode", "/xml-files/", "/rpc", "/acs/")
FULL_PREFIXES = ("/api/v1/docs/", "/api/v1/schema/", "/api/v1/health")


def lean_path(path: str) -> bool:
    """Is `path` one the lean handler serves?"""
    return path.startswith(LEAN_PREFIXES) and not path.startswith(FULL_PREFIXES)


class ApiASGIHandler(ASGIHandler):
    """`ASGIHandler` with `settings.API_MIDDLEWARE` and no thread hops of its own."""

    def load_middleware(self, is_async: bool = False) -> None:
        # BaseHandler reads the list from settings.MIDDLEWARE; it is given the API's for the
        # duration of the call (once, at start-up, before any request is served).
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.API_MIDDLEWARE
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = full

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"the API handler serves HTTP only, not {scope['type']}")
        await self.handle(scope, receive, send)

    async def handle(self, scope, receive, send):
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            set_script_prefix(get_script_prefix(scope))
            # Machines get English whatever DJANGO_LANGUAGE_CODE says (a client that prefers
            # Chinese gets the error code's Chinese message: core.errors).
            with translation.override("en"):
                request, response = self.create_request(scope, body_file)
                if request is not None:
                    response = await self.run_get_response(request)
            if not response.streaming and not response.has_header("Content-Length"):
                # As CommonMiddleware does: clients get a length, not a chunked answer.
                response.headers["Content-Length"] = str(len(response.content))
            try:
                await self.send_response(response, send)
            except OSError:  # the client went away; the request itself is complete
                logger.info("the client closed the connection before the answer was sent")
            if response.streaming:  # its file or iterator (none of the API's answers streams)
                response.close()
        finally:
            body_file.close()
