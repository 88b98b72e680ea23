"""The exec channel's wire format, shared by the host and the in-guest agent (stdlib
only: this file is shipped into the image next to the agent).

A frame is a 12-byte header and its payload::

    magic    2 bytes  b"SX"
    version  1 byte   VERSION; a peer speaking another one is refused at once
    kind     1 byte   CONTROL (a JSON object) or a data stream (STDIN, STDOUT, STDERR, FILE)
    channel  4 bytes  the process or file transfer the frame belongs to; 0: the session
    length   4 bytes  payload bytes: at most MAX_DATA, or MAX_CONTROL for CONTROL

Data frames carry raw bytes as produced; an empty one ends its stream (EOF). Every
read is bounded by the header's length, checked before anything is read: a peer
that sends garbage or a huge length ends the session with a ProtocolError, never a
hang or an unbounded allocation.
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

MAGIC = b"SX"
VERSION = 1
HEADER = struct.Struct("!2sBBII")
CONTROL, STDIN, STDOUT, STDERR, FILE = 1, 2, 3, 4, 5
KINDS = (CONTROL, STDIN, STDOUT, STDERR, FILE)
MAX_DATA = 256 << 10  # one chunk of output, input or a file
MAX_CONTROL = 64 << 10  # a spawn request with its argv and environment


class ProtocolError(Exception):
    """The peer broke the protocol; the session cannot go on."""


def encode(kind: int, channel: int, payload: bytes) -> bytes:
    limit = MAX_CONTROL if kind == CONTROL else MAX_DATA
    if kind not in KINDS or len(payload) > limit or not 0 <= channel < 1 << 32:
        raise ValueError(f"not a frame: kind {kind}, channel {channel}, {len(payload)} bytes")
    return HEADER.pack(MAGIC, VERSION, kind, channel, len(payload)) + payload


def control(channel: int, op: str, **fields: Any) -> bytes:
    body = json.dumps({"op": op, **fields}, separators=(",", ":")).encode()
    return encode(CONTROL, channel, body)


def data_frames(kind: int, channel: int, data: bytes) -> list[bytes]:
    """``data`` as frames of at most MAX_DATA bytes (no end-of-stream frame)."""
    return [encode(kind, channel, data[i : i + MAX_DATA]) for i in range(0, len(data), MAX_DATA)]


def parse_header(header: bytes) -> tuple[int, int, int]:
    """(kind, channel, length) of a header, or ProtocolError saying what is wrong."""
    magic, version, kind, channel, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(f"not a frame (starts with {header[:2]!r}, not {MAGIC!r})")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version}, this side speaks {VERSION}")
    if kind not in KINDS:
        raise ProtocolError(f"unknown frame kind {kind}")
    limit = MAX_CONTROL if kind == CONTROL else MAX_DATA
    if length > limit:
        raise ProtocolError(f"a frame of {length} bytes (at most {limit})")
    return kind, channel, length


def decode_control(payload: bytes) -> dict[str, Any]:
    try:
        message = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("a control frame that is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ProtocolError("a control frame without an 'op'")
    return message


class Decoder:
    """Frames from bytes as they arrive (the agent's non-blocking side)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._need: tuple[int, int, int] | None = None

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        self._buffer += data
        frames: list[tuple[int, int, bytes]] = []
        while True:
            if self._need is None:
                if len(self._buffer) < HEADER.size:
                    return frames
                self._need = parse_header(bytes(self._buffer[: HEADER.size]))
                del self._buffer[: HEADER.size]
            kind, channel, length = self._need
            if len(self._buffer) < length:
                return frames
            frames.append((kind, channel, bytes(self._buffer[:length])))
            del self._buffer[:length]
            self._need = None


def read_frame(stream: BinaryIO) -> tuple[int, int, bytes] | None:
    """The next frame from a blocking stream; None at a clean end between frames."""
    header = _read_exactly(stream, HEADER.size, allow_eof=True)
    if header is None:
        return None
    kind, channel, length = parse_header(header)
    payload = _read_exactly(stream, length, allow_eof=False) if length else b""
    assert payload is not None
    return kind, channel, payload


def _read_exactly(stream: BinaryIO, size: int, *, allow_eof: bool) -> bytes | None:
    chunks, got = [], 0
    while got < size:
        chunk = stream.read(size - got)
        if not chunk:
            if allow_eof and got == 0:
                return None
            raise ProtocolError(f"the peer closed the channel inside a frame ({got}/{size} bytes)")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
