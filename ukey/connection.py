"""One WebSocket connection to an E-Port control: the handshake, requests out, answers
matched to their requests. No queue, no reconnects: that is the gateway's job."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from . import protocol

logger = logging.getLogger("ukey.connection")


class CardConnectionLost(Exception):
    pass


class _FrameHookConnection(ClientConnection):
    """A client connection that hands each complete text frame to `frame_hook` in the
    transport's callback, as it arrives, instead of queueing it for a reader task (one
    event-loop iteration, and whatever else runs in it, sooner)."""

    frame_hook: Callable[[bytes], None] | None = None

    def process_event(self, event) -> None:
        hook = self.frame_hook
        if hook is not None and isinstance(event, Frame) and event.opcode is Opcode.TEXT and event.fin:
            hook(bytes(event.data))
            return
        super().process_event(event)


class CardConnection:
    """One open WebSocket to an E-Port control, after its handshake frame.

    Up to `pipeline_depth` requests may be outstanding; answers are matched by `_id`.
    A bare `{Result,...}` answer carries no `_id`: the control answers in order, so it
    belongs to the oldest outstanding request."""

    def __init__(self, ws: ClientConnection, slug: str) -> None:
        self.ws = ws
        self.slug = slug
        self._next_id = 0
        self._pending: dict[int, asyncio.Future] = {}  # insertion order = send order
        self.closed = asyncio.Event()
        self.close_reason = ""
        # Called with the future of a request whose answer just arrived, before its result is
        # set (the gateway sends the next request from there).
        self.on_answer: Callable[[asyncio.Future], None] | None = None
        if isinstance(ws, _FrameHookConnection):
            ws.frame_hook = self._frame
        self._reader = asyncio.create_task(self._read(), name=f"ukey-reader-{slug}")

    @classmethod
    async def open(cls, url: str, *, slug: str, connect_timeout: float, max_frame_bytes: int) -> CardConnection:
        """Connect and wait for the control's handshake frame."""
        ws = await connect(
            url,
            open_timeout=connect_timeout,
            max_size=max_frame_bytes,
            ping_interval=None,  # the protocol defines no heartbeat; the gateway probes instead
            close_timeout=2,
            compression=None,
            create_connection=_FrameHookConnection,
        )
        try:
            first = await asyncio.wait_for(ws.recv(), timeout=connect_timeout)
            frame = protocol.parse_frame(first)
            if frame.kind != "handshake":
                raise ConnectionError("the control's first frame was not the open handshake")
        except BaseException:
            await ws.close()
            raise
        return cls(ws, slug)

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def _frame(self, message: str | bytes) -> None:
        """One frame from the control: the answer of the request it matches."""
        try:
            frame = protocol.parse_frame(message)
        except protocol.FrameError:
            logger.warning("card %s sent a frame that is not a JSON object; dropped", self.slug)
            return
        if frame.kind == "response" and frame.id in self._pending:
            future = self._pending.pop(frame.id)
        elif frame.kind == "bare" and self._pending:
            future = self._pending.pop(next(iter(self._pending)))
        else:
            if frame.kind != "handshake":
                logger.info("card %s: dropped a %s frame with _id %s that matches no request",
                            self.slug, frame.kind, frame.id)
            return
        if self.on_answer is not None:
            try:
                self.on_answer(future)
            except Exception:  # the answer must still reach its caller
                logger.exception("card %s: the answer hook failed", self.slug)
        if not future.done():
            future.set_result(frame.result)

    async def _read(self) -> None:
        try:
            async for message in self.ws:  # frames the hook did not take (fragmented ones)
                self._frame(message)
            self.close_reason = "the control closed the connection"
        except ConnectionClosed as exc:
            self.close_reason = f"connection closed ({exc.__class__.__name__})"
        except Exception as exc:  # a reader must never die silently
            self.close_reason = f"reader failed: {exc.__class__.__name__}"
            logger.exception("card %s reader failed", self.slug)
        finally:
            self.closed.set()
            pending, self._pending = self._pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(CardConnectionLost(self.close_reason))

    def send_nowait(self, method: str, args: dict[str, Any]) -> asyncio.Future:
        """Send one request now, from synchronous code (the frame is handed to the socket
        before this returns); returns the future of its answer."""
        if self.closed.is_set() or self.ws.protocol.state is not State.OPEN:
            raise CardConnectionLost(self.close_reason or "connection closed")
        self._next_id += 1
        request_id = self._next_id
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self.ws.protocol.send_text(protocol.build_request(method, request_id, args).encode("utf-8"))
            self.ws.send_data()
        except Exception as exc:
            self._pending.pop(request_id, None)
            raise CardConnectionLost(f"connection failed ({exc.__class__.__name__})") from None
        return future

    async def send(self, method: str, args: dict[str, Any]) -> asyncio.Future:
        """Send one request; returns the future of its answer."""
        return self.send_nowait(method, args)

    def abort(self) -> None:
        """Drop the connection at once (after a timeout: no late answer may arrive)."""
        self.ws.transport.abort()

    async def close(self) -> None:
        await self.ws.close()
        try:
            await asyncio.wait_for(self._reader, timeout=3)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._reader.cancel()
