"""The HTTP protocol `runplatform` serves with: uvicorn's httptools protocol, with limits on
the request head. Without them a client could send megabytes of headers (the parser keeps
them in memory and other requests wait while it chews): 431 Request Header Fields Too Large
for more than HEADER_LINE_MAX bytes in one header, HEADERS_MAX_BYTES in all, or
HEADERS_MAX_COUNT headers; 414 for a request line longer than URL_MAX. The connection is
closed after the answer."""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_LINE_MAX = 16 * 1024
HEADERS_MAX_BYTES = 64 * 1024
HEADERS_MAX_COUNT = 100
URL_MAX = 16 * 1024

_REASONS = {414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport) -> None:
        self._head_reset()
        super().connection_made(transport)

    def _head_reset(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._refusal: tuple[int, str] | None = None

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # answered already; the connection is closing
        in_head = self._in_head
        super().data_received(data)
        if in_head and self._in_head:  # the head is still not complete after this chunk
            # The parser keeps an unfinished head in memory: stop after one chunk (asyncio
            # reads at most 256 KiB at a time) past the limit.
            self._head_bytes += len(data)
            if self._head_bytes > HEADERS_MAX_BYTES + URL_MAX:
                self._refuse(431, f"the request head is larger than {HEADERS_MAX_BYTES} bytes")
        if self._refusal is not None:
            self._answer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_reset()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > URL_MAX:
            self._refuse(414, f"the request line is longer than {URL_MAX} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if len(name) + len(value) > HEADER_LINE_MAX:
            self._refuse(431, f"a header is longer than {HEADER_LINE_MAX} bytes")
        elif self._header_count > HEADERS_MAX_COUNT:
            self._refuse(431, f"more than {HEADERS_MAX_COUNT} headers")
        if self._refusal is None:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._refusal is None:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._refusal is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refusal is None:
            super().on_message_complete()

    def _refuse(self, status: int, message: str) -> None:
        """Answered by data_received once the parser returns (or at once, from there)."""
        if self._refusal is None:
            self._refusal = (status, message)

    def _answer(self) -> None:
        status, message = self._refusal
        self.logger.warning("refused a request head: %s", message)
        body = message.encode("ascii") + b"\n"
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend([b"content-type: text/plain; charset=utf-8\r\n",
                     b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                     b"connection: close\r\n", b"\r\n", body])
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(head))
            self.transport.close()
