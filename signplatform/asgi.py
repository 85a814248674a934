"""ASGI entry point: HTTP (Django), WebSocket (Channels: card agents at /agent/v1), and the
lifespan hooks that host the UKey gateway inside this process in the embedded mode."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "signplatform.settings")

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter
from django.conf import settings
from django.urls import path

from api.fastsign import PATH as FAST_SIGN_PATH
from api.fastsign import FastSign
from core.eventloop import thread_switch_interval_set
from signing.agent_host import AgentConsumer

from .api_handler import ApiASGIHandler, lean_path
from .lifespan import LifespanGateway

logger = logging.getLogger("signplatform.asgi")
thread_switch_interval_set(settings.THREAD_SWITCH_INTERVAL_MS)  # this module is loaded by the serving process

full_app = django_asgi_app
if settings.SERVE_STATIC:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    full_app = ASGIStaticFilesHandler(django_asgi_app)
api_app = ApiASGIHandler()
fast_sign = FastSign(api_app) if settings.API_FAST_PATH else api_app


async def http_app(scope, receive, send):
    """The paths machines call go to the lean API handler (`POST /api/v1/sign` through its
    fast path first), everything else to Django's."""
    path = scope["path"]
    app = fast_sign if path == FAST_SIGN_PATH else api_app if lean_path(path) else full_app
    await app(scope, receive, send)


# Card agents dial in here (ukey/agentproto.py).
websocket_urlpatterns = [path("agent/v1", AgentConsumer.as_asgi())]

application = LifespanGateway(
    ProtocolTypeRouter(
        {
            "http": http_app,
            "websocket": URLRouter(websocket_urlpatterns),
        }
    )
)
