"""The API's paged lists (`GET /api/v1/xml-documents`, `GET /api/v1/declarations`) and their
query parameters: read one way, answered in one shape, `{"count", "page", "page_size",
"pages", "results"}`."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter

from core.errors import invalid_request

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_PAGE = 1_000_000
MAX_ID = 2**63 - 1  # the id column's range (PostgreSQL bigint)

PAGE_PARAMETERS = [
    OpenApiParameter("page", int),
    OpenApiParameter("page_size", int, description=f"At most {MAX_PAGE_SIZE}; default {DEFAULT_PAGE_SIZE}."),
]


def query_int(value: str | None, *, name: str, default: int, maximum: int) -> int:
    if value in (None, ""):
        return default
    # isascii: str.isdigit() also accepts "²" and "٣", which int() refuses or misreads; the
    # length first, so a thousand-digit number is never converted.
    if not (value.isascii() and value.isdigit() and len(value) <= len(str(maximum))) \
            or not 1 <= int(value) <= maximum:
        raise invalid_request(f"{name} must be a whole number from 1 to {maximum}", {name: ["invalid"]})
    return int(value)


def query_text(value: str | None, *, name: str) -> str | None:
    """A query text: no NUL or other control character (no column holds them)."""
    if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise invalid_request(f"{name} must not contain control characters", {name: ["invalid"]})
    return value


def query_bool(value: str | None, *, name: str) -> bool | None:
    if value in (None, ""):
        return None
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise invalid_request(f"{name} must be true or false", {name: ["invalid"]})


def page_params(params) -> tuple[int, int]:
    """The page asked for and its size, from the query (`page`, `page_size`)."""
    page = query_int(params.get("page"), name="page", default=1, maximum=MAX_PAGE)
    size = query_int(params.get("page_size"), name="page_size", default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
    return page, size


def page_answer(rows, serializer_class, *, page: int, size: int, order: tuple[str, ...]) -> dict[str, Any]:
    """One page of `rows` in `order`, serialised, with the count of all rows. Database work:
    call it on a database thread."""
    count = rows.count()
    chunk = list(rows.order_by(*order)[(page - 1) * size: page * size])
    return {"count": count, "page": page, "page_size": size, "pages": -(-count // size),
            "results": serializer_class(chunk, many=True).data}
