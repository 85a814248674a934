"""The channel-layer contract between callers and a card's gateway.

A caller sends a `ukey.request` to the channel `ukey.<slug>` and waits on its own reply
channel for the one `ukey.reply`. A reply with `result: null` is a failure carrying one
of the three codes below, which the API reports as they are."""

from __future__ import annotations

from typing import Any

CHANNEL_PREFIX = "ukey."

REQUEST = "ukey.request"
REPLY = "ukey.reply"
RESET = "ukey.reset"  # a caller found the card's answer wrong: reset the connection (no reply)
START = "ukey.start"
SHUTDOWN = "ukey.shutdown"

UKEY_ERROR = "UKEY_ERROR"  # the card answered Result:false, or its answer is unusable
UKEY_TIMEOUT = "UKEY_TIMEOUT"  # no answer in time (the connection is reset)
UKEY_UNAVAILABLE = "UKEY_UNAVAILABLE"  # no gateway, not connected, queue full, shutting down


def device_channel(slug: str) -> str:
    """The channel a card's gateway listens on."""
    return CHANNEL_PREFIX + slug


def request_message(*, request: str, reply: str, method: str, args: dict[str, Any], deadline: float,
                    request_id: str = "", sealed_pin: str | None = None) -> dict[str, Any]:
    """One card operation for a gateway. `deadline` is Unix time; `sealed_pin` a PIN the
    client sent itself, sealed by the host (it never crosses the layer in clear); a
    `passwd` in `args` is dropped (the gateway adds the device's PIN)."""
    message = {
        "type": REQUEST,
        "id": request,
        "reply": reply,
        "method": method,
        "args": {k: v for k, v in args.items() if k != "passwd"},
        "deadline": deadline,
        "request_id": request_id,
    }
    if sealed_pin:
        message["fallback_pin"] = sealed_pin
    return message


def reset_message(*, reason: str) -> dict[str, Any]:
    """Ask a card's gateway to drop its connection (and reconnect), e.g. after a signature
    that did not verify over the data sent: whatever mixed the answers up is not trusted."""
    return {"type": RESET, "reason": reason[:300]}


def reply_message(request: dict[str, Any], *, device: str, cert_no: str, algorithm: str,
                  payload: dict[str, Any]) -> dict[str, Any]:
    """The gateway's answer to `request`: `payload` (ok, code, message, result, duration)
    plus who answered."""
    return {
        **payload,
        "type": REPLY,
        "id": request.get("id"),
        "device": device,
        "method": request.get("method"),
        "cert_no": cert_no,
        "algorithm": algorithm,
    }
