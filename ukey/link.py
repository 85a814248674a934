"""The card link: callers in the other processes of the same host hand a gateway process
their card requests over a Unix socket, instead of the channel layer.

Over channels-redis one card call costs five or six Redis round trips (the request sent,
received and its receive backup cleared; the reply sent and received) and as many message
(de)serialisations on both sides: most of the CPU a signed request costs a web process and
the gateway process. The link carries the same messages (ukey/messages.py) over one
long-lived connection per process pair, pipelined, answers matched by the request's `id`.

- The gateway process listens on a socket in its private directory (mode 0600: only its
  own user can connect, as only it can read the card PINs) and names it in each card's
  status (`DeviceStatus.link`), which every process reads before a call anyway.
- A caller that cannot connect to the named socket (another host, a stale status) uses the
  channel layer, as before; a link that breaks fails the calls on it (UKEY_UNAVAILABLE), and
  the next call connects again.
- Frames: a 4-byte big-endian length, then UTF-8 JSON. Caller → gateway process:
  `{"device": slug, "message": <ukey.request>}`; back: `{"id": <request id>, "reply": <ukey.reply>}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
from typing import Any, Awaitable, Callable

logger = logging.getLogger("ukey.link")

_HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024


class LinkUnavailable(Exception):
    """The link broke while a call waited for its answer (which may have been given)."""


class LinkNotConnected(LinkUnavailable):
    """The link could not be opened: nothing was sent (the caller may use the channel layer)."""


def _frame(obj: dict[str, Any]) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode("ascii")  # escaped: any text survives
    return _HEADER.pack(len(body)) + body


async def _read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    (length,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if length > MAX_FRAME:
        raise ValueError(f"a link frame of {length} bytes")
    return json.loads(await reader.readexactly(length))


# A gateway process's side: `serve(device, message, reply_future)` hands one request to the
# device's gateway (and sets the future to the reply message, which it always does).
Serve = Callable[[str, dict[str, Any], asyncio.Future], Awaitable[None]]


class LinkServer:
    """The gateway process's socket."""

    def __init__(self, path: str, serve: Serve) -> None:
        self.path = path
        self._serve = serve
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a socket left by a process that died
        old_mask = os.umask(0o177)  # created 0600: no moment in which others could connect
        try:
            self._server = await asyncio.start_unix_server(self._connection, path=self.path, limit=MAX_FRAME)
        finally:
            os.umask(old_mask)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            while True:
                try:
                    request = await _read_frame(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                message = request.get("message")
                if not isinstance(message, dict) or not isinstance(request.get("device"), str):
                    logger.warning("card link: a malformed request; connection closed")
                    return
                self._track(self._answer(writer, request["device"], message))
        except ValueError as exc:
            logger.warning("card link: %s; connection closed", exc)
        finally:
            self._tasks.discard(task)
            writer.close()

    def _track(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, writer: asyncio.StreamWriter, device: str, message: dict[str, Any]) -> None:
        future = asyncio.get_running_loop().create_future()
        await self._serve(device, message, future)
        reply = await future
        if not writer.is_closing():
            writer.write(_frame({"id": message.get("id"), "reply": reply}))


class LinkClient:
    """One connection to a gateway process's socket, shared by every caller of this process."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[str, asyncio.Future] = {}
        self._connecting = asyncio.Lock()
        self._reader_task: asyncio.Task | None = None

    async def _connection(self) -> asyncio.StreamWriter:
        if self._writer is not None and not self._writer.is_closing():
            return self._writer
        async with self._connecting:
            if self._writer is None or self._writer.is_closing():
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_unix_connection(self.path, limit=MAX_FRAME), timeout=2)
                except (OSError, asyncio.TimeoutError) as exc:
                    raise LinkNotConnected(f"cannot connect: {exc.__class__.__name__}") from None
                self._writer = writer
                self._reader_task = asyncio.create_task(self._read(reader, writer), name="ukey-link-reader")
        return self._writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reason = "the card link closed"
        try:
            while True:
                answer = await _read_frame(reader)
                future = self._pending.pop(str(answer.get("id")), None)
                if future is not None and not future.done():
                    future.set_result(answer.get("reply"))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            reason = f"the card link closed ({exc.__class__.__name__})"
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()
        for future in [f for f in self._pending.values() if not f.done()]:
            future.set_exception(LinkUnavailable(reason))
        self._pending.clear()

    async def call(self, device: str, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request message; its reply message. Raises LinkNotConnected when the link
        cannot be opened (nothing was sent), LinkUnavailable when it broke before the answer
        came (it may have been given), asyncio.TimeoutError after `timeout` seconds."""
        writer = await self._connection()
        key = str(message["id"])
        future = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            writer.write(_frame({"device": device, "message": message}))
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(key, None)
