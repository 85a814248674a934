"""A small client for the signing platform's API (docs/signing-api.md), standard
library only, so a client system can copy this one package.

    from signclient import SignClient
    client = SignClient("http://127.0.0.1:8000", "AK...", "secret")
    client.sign("text")["signature"]

Every call is signed anew (fresh timestamp and nonce); errors raise `ApiError` with the
spec's code, message and request id."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

__all__ = ["ApiError", "SignClient", "canonical_query", "sign_headers", "string_to_sign"]


class ApiError(Exception):
    """An error answer of the platform."""

    def __init__(self, status: int, code: str, message: str, request_id: str = "", details: dict | None = None):
        super().__init__(f"{status} {code}: {message} (request {request_id})")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.details = details or {}


def canonical_query(query: str) -> str:
    """name=value pairs, RFC 3986 percent-encoded, sorted by name then value, joined by &."""
    pairs = sorted(
        (quote(name, safe="-_.~"), quote(value, safe="-_.~"))
        for name, value in parse_qsl(query, keep_blank_values=True)
    )
    return "&".join(f"{name}={value}" for name, value in pairs)


def string_to_sign(method: str, path: str, query: str, access_id: str, timestamp: str, nonce: str, body: bytes) -> str:
    return "\n".join(
        ["HMAC-SHA256", method.upper(), path, canonical_query(query), access_id, timestamp, nonce,
         hashlib.sha256(body).hexdigest()]
    )


def sign_headers(method: str, url: str, body: bytes, access_id: str, secret: str) -> dict[str, str]:
    """The four authentication headers for one request."""
    parts = urlsplit(url)
    timestamp = str(int(time.time() * 1000))
    nonce = secrets.token_hex(16)
    # The spec signs the percent-decoded path (what the server sees after decoding the URL).
    text = string_to_sign(method, unquote(parts.path) or "/", parts.query, access_id, timestamp, nonce, body)
    signature = hmac.new(secret.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).hexdigest()
    return {"X-Access-Id": access_id, "X-Timestamp": timestamp, "X-Nonce": nonce, "X-Signature": signature}


class SignClient:
    def __init__(self, base_url: str, access_id: str, secret: str, *, timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.access_id = access_id
        self.secret = secret
        self.timeout = timeout

    def request(self, method: str, path: str, payload: Any = None, *, raw_body: bytes | None = None) -> Any:
        """One signed call; returns the decoded JSON answer or raises ApiError. `raw_body`
        sends JSON bytes as they are (e.g. 179 data whose numbers must keep their text)."""
        url = self.base_url + path
        if raw_body is not None:
            body = raw_body
        else:
            body = b"" if payload is None else json.dumps(payload, ensure_ascii=False).encode("utf-8")
        has_body = raw_body is not None or payload is not None
        headers = sign_headers(method, url, body, self.access_id, self.secret)
        if has_body:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=body if has_body else None, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                error = json.loads(raw)
            except ValueError:
                raise ApiError(exc.code, "HTTP_ERROR", raw[:200].decode("utf-8", "replace")) from None
            raise ApiError(exc.code, error.get("code", "HTTP_ERROR"), error.get("message", ""),
                           error.get("request_id", ""), error.get("details")) from None

    def sign(self, data: str, *, no_hash: bool = False, device: str | None = None) -> dict:
        payload: dict[str, Any] = {"data": data, "no_hash": no_hash}
        if device:
            payload["device"] = device
        return self.request("POST", "/api/v1/sign", payload)

    def certificate(self, device: str | None = None) -> dict:
        return self.request("GET", "/api/v1/certificate" + (f"?device={quote(device)}" if device else ""))

    def rpc(self, method: str, args: dict | None = None, *, device: str | None = None) -> dict:
        payload: dict[str, Any] = {"_method": method, "args": args or {}}
        if device:
            payload["device"] = device
        return self.request("POST", "/api/v1/rpc", payload)

    def sign_xml(self, xml: str, *, filename: str | None = None, directory: str | None = None,
                 device: str | None = None) -> dict:
        """Sign a CEB message; the answer has `signed_xml` and the stored `document_id`."""
        payload: dict[str, Any] = {"xml": xml}
        for name, value in (("filename", filename), ("directory", directory), ("device", device)):
            if value:
                payload[name] = value
        return self.request("POST", "/api/v1/sign/xml", payload)

    def verify_xml(self, xml: str) -> dict:
        """Check a signed CEB message: `valid`, `digest_ok`, `signature_ok`, `reason`."""
        return self.request("POST", "/api/v1/verify/xml", {"xml": xml})

    def sign_179(self, payload_json: str | bytes, *, upload: bool = False) -> dict:
        """Sign 179 payment data given as JSON text (sent as it is, so numbers keep their
        text); `upload` also posts it to customs."""
        raw = payload_json.encode("utf-8") if isinstance(payload_json, str) else payload_json
        if upload:
            text = raw.decode("utf-8").rstrip()
            if not text.endswith("}"):
                raise ValueError("179 data must be a JSON object")
            raw = (text[:-1].rstrip() + ', "upload": true}').encode("utf-8")
        return self.request("POST", "/api/v1/sign/179", raw_body=raw)

    def rotate_self(self, grace_seconds: int = 86400) -> dict:
        return self.request("POST", "/api/v1/access-ids/self/rotate", {"grace_seconds": grace_seconds})

    def health(self) -> dict:
        """The health answer; also when the platform reports it with HTTP 503 (no card can sign)."""
        try:
            with urllib.request.urlopen(self.base_url + "/api/v1/health", timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return json.loads(raw)
            except ValueError:
                raise ApiError(exc.code, "HTTP_ERROR", raw[:200].decode("utf-8", "replace")) from None
