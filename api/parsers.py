"""The API's JSON parser: DRF's, reading with core.jsontext's strict rules, and refusing
with the documented error shape (400 INVALID_REQUEST naming where the problem is)."""

from __future__ import annotations

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from core.errors import invalid_request
from core.jsontext import JsonInputError, json_loads_strict


class StrictJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        if encoding.lower().replace("-", "").replace("_", "") != "utf8":  # JSON is UTF-8 (RFC 8259)
            raise invalid_request(f"the request body must be UTF-8 JSON, not charset={encoding[:40]}",
                                  {"Content-Type": ["charset must be utf-8"]})
        raw = stream.read() if stream is not None else b""
        try:
            return json_loads_strict(raw.decode(encoding))
        except JsonInputError as exc:
            raise invalid_request(f"the request body is refused: {exc.message}", {exc.path: [exc.message]}) from None
        except ValueError as exc:  # JSONDecodeError, bad UTF-8, an integer of too many digits
            raise ParseError(f"JSON parse error - {exc}") from None
