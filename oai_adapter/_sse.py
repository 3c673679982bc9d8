"""An incremental, sans-IO decoder for `text/event-stream` (WHATWG HTML, "Server-sent events").

Bytes in, `(event_name, data)` pairs out; it imports neither trio nor httpx2. It follows the
WHATWG parsing rules: lines end with LF, CR or CRLF (a CR at the end of one chunk and the LF
starting the next are one line end); a line starting with `:` is a comment; `data` lines of one
event are joined with LF; `event:` names the event (default `message`); a single space after
the colon is dropped; a leading UTF-8 BOM is ignored; an event is dispatched at a blank line,
and one with no `data` is not dispatched. Lines are split on bytes and never decoded here:
CR and LF cannot occur inside a multi-byte UTF-8 sequence, so a character split across two
chunks is joined before anything reads it, and `data` reaches the JSON decoder as `bytes`.

One deliberate leniency: at end of stream, an event whose last line ended with a line break
but was not followed by the blank line is still dispatched (`close()`); some servers end that
way. A trailing partial line — the connection cut inside a line — is discarded, as WHATWG says.

Bounded buffering: an event may be large (Responses' `response.completed` repeats the whole
output), but a peer that never sends a line break or a blank line must not grow our memory
without limit. `MAX_EVENT_BYTES` (8 MiB) caps the bytes held for one event, as h11 caps a
request head at 16 KiB; past it, `SSEError` is raised and the stream is a `PROTOCOL` error.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_EVENT_BYTES", "SSEDecoder", "SSEError", "SSEEvent"]

#: Cap on the bytes buffered for one event (see the module header).
MAX_EVENT_BYTES: Final = 8 * 1024 * 1024

#: `(event name, data)`: the name is `"message"` unless an `event:` line said otherwise.
SSEEvent = tuple[str, bytes]

_BOM: Final = b"\xef\xbb\xbf"


class SSEError(ValueError):
    """The byte stream cannot be an event stream (an event larger than the cap)."""


class SSEDecoder:
    """Feed it chunks as they arrive; it returns the events they complete."""

    __slots__ = ("_buf", "_data", "_data_size", "_event", "_max", "_pending_cr", "_started")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buf = b""  # an incomplete line
        self._data: list[bytes] = []  # `data` lines of the event being built
        self._data_size = 0
        self._event = ""  # `event:` name of the event being built
        self._max = max_event_bytes
        self._pending_cr = False  # the last chunk ended in CR: drop an LF that starts the next
        self._started = False  # the BOM check is done

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events that `chunk` completes, in order."""
        if not chunk:
            return []
        if (
            chunk[:6] == b"data: "
            and chunk[-2:] == b"\n\n"
            and chunk.find(b"\n") == len(chunk) - 2
            and not self._buf
            and self._started
            and not self._data
            and not self._event
            and not self._pending_cr
            and b"\r" not in chunk
            and len(chunk) - 7 <= self._max
        ):
            # The decode-step chunk: one `data: X` line and the blank line, nothing pending —
            # one event as it is (the same result as the rules below; one read per token).
            return [("message", chunk[6:-2])]
        if self._pending_cr:
            self._pending_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._buf + chunk if self._buf else chunk
        if not self._started:
            if len(buf) < 3 and _BOM.startswith(buf):
                self._buf = buf
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[3:]
        if b"\r" in buf:
            self._pending_cr = buf[-1:] == b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        out: list[SSEEvent]
        if lines and len(lines) & 1 == 0 and not self._data and not self._event:
            # The common chunk: nothing pending, and only `data: X` lines each followed by a
            # blank one. Then each `data` line is an event as it is — the same result as the
            # rules in `_lines`, in C loops. A line starts with `data: ` iff it sorts in
            # [b"data: ", b"data:!"), so min and max check every line at once.
            frames = lines[0::2]
            if (
                not any(lines[1::2])
                and min(frames) >= b"data: "
                and max(frames) < b"data:!"
                and max(map(len, frames)) - 5 + len(self._buf) <= self._max
            ):
                return [("message", frame[6:]) for frame in frames]
        out = []
        if lines:
            self._lines(lines, out)
        if self._data_size + len(self._buf) > self._max:
            raise SSEError(f"an event is larger than {self._max} bytes")
        return out

    def close(self) -> list[SSEEvent]:
        """End of stream: the event whose lines were complete, if any (see the header)."""
        self._buf = b""
        out: list[SSEEvent] = []
        if self._data:
            self._lines([b""], out)
        return out

    def _lines(self, lines: list[bytes], out: list[SSEEvent]) -> None:
        data = self._data
        for line in lines:
            if not line:
                if data:
                    out.append(
                        (self._event or "message", data[0] if len(data) == 1 else b"\n".join(data))
                    )
                    data = self._data = []
                    self._data_size = 0
                self._event = ""
            elif line[:5] == b"data:":
                value = line[6:] if line[5:6] == b" " else line[5:]
                data.append(value)
                self._data_size += len(value) + 1
                if self._data_size > self._max:
                    raise SSEError(f"an event is larger than {self._max} bytes")
            elif line[:1] == b":":
                continue
            else:
                name, sep, value = line.partition(b":")
                if sep and value[:1] == b" ":
                    value = value[1:]
                if name == b"event":
                    self._event = value.decode("utf-8", "replace")
                elif name == b"data":  # `data` with no colon: an empty data line
                    data.append(b"")
                    self._data_size += 1
                # `id` and `retry` steer reconnection, which a completion never does.
