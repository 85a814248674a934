"""What to tell a person when an outbound HTTP call (customs upload, webhook delivery) could
not connect: httpx wraps the socket error a few levels down."""

from __future__ import annotations

import socket

import httpx


def connect_error_text(exc: BaseException, url: str) -> str:
    """"connection refused by HOST…", "the host name HOST could not be resolved", or the error."""
    host = httpx.URL(url).host
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return f"connection refused by {host}: nothing listens at {url}"
        if isinstance(cause, socket.gaierror):
            return f"the host name {host} could not be resolved"
        cause = cause.__cause__ or cause.__context__
    return f"could not connect to {url}: {exc or exc.__class__.__name__}"
