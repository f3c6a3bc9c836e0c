"""A stream reader that refuses oversized MQTT packets before reading them.

amqtt reads a packet's remaining length and then ``readexactly`` that many bytes, so a client
announcing a 10 MB PUBLISH gets 10 MB buffered (and then routed and retained). This adapter
sits between the socket and amqtt's parser and follows the MQTT framing as amqtt reads it: the
first byte of a packet, the remaining-length bytes, then the body. When the announced remaining
length is above the limit it raises ``PacketTooLarge`` before one byte of the body is read, and
amqtt's reader loop then closes the connection (as AWS IoT closes a client that sends more than
its limits). A read that runs past the announced length (a malformed packet) is refused too.

It also refuses a PUBLISH whose topic holds a wildcard [MQTT-3.3.2-2]: amqtt rejects one with an
MQTTError in the middle of the packet and reads on from there, taking its payload for the next
packets (a payload can smuggle packets so); here the connection is closed instead.
"""

from __future__ import annotations

from collections.abc import Callable

from amqtt.adapters import ReaderAdapter

_HEADER, _LENGTH, _BODY = 0, 1, 2
_PUBLISH = 3
_CONNECT = 1
_CONNECT_LEVEL_AT = 6
"""Offset of the protocol level in a CONNECT's body: after the protocol name (00 04 "MQTT")."""
_TOPIC_LENGTH, _TOPIC = 0, 1


class FramingViolation(Exception):
    """The client broke MQTT framing or the packet-size limit; the connection must close."""


class PacketTooLarge(FramingViolation):
    pass


class BoundedReader(ReaderAdapter):  # type: ignore[misc]
    def __init__(self, inner: ReaderAdapter, max_packet_bytes: int,
                 stream_error: Callable[[], BaseException | None] = lambda: None) -> None:
        self._inner = inner
        self.stream_error = stream_error
        """The error the underlying stream ended with, if any (asyncio's ``StreamReader.exception``)."""
        self._max = max_packet_bytes
        self._state = _HEADER
        self._length = 0
        self._multiplier = 1
        self._left = 0
        self._publish_field: int | None = None
        """Which field of a PUBLISH the next body read is (its topic length, its topic), if known."""
        self._topic_length = 0
        self.violation: str | None = None
        """What the client did wrong, once it did (the broker reports it as CLIENT_ERROR)."""
        self._packets = 0
        self._first_type = 0
        self._first_body = b""
        """The start of the connection's first packet (its CONNECT): enough for the protocol level."""

    async def read(self, n: int = -1) -> bytes:
        if n == 0:  # an empty field (amqtt reads a zero-length will message or password so)
            return b""
        if self._state == _BODY:
            if n < 0 or n > self._left:
                self._refuse(FramingViolation(f"a read of {n} bytes runs past the packet's remaining "
                                              f"{self._left} bytes"))
            data = bytes(await self._inner.read(n))
            if self._packets == 1 and len(self._first_body) < _CONNECT_LEVEL_AT + 1:
                self._first_body += data[:_CONNECT_LEVEL_AT + 1 - len(self._first_body)]
            self._left -= len(data)
            if self._left <= 0:
                self._state = _HEADER
            if self._publish_field is not None:
                self._check_publish_field(data)
            return data
        if n != 1:  # amqtt reads a fixed header one byte at a time; anything else is a desync
            self._refuse(FramingViolation(f"a read of {n} bytes inside a packet's fixed header"))
        data = await self._inner.read(n)
        for byte in data:
            self._observe_header_byte(byte)
        return bytes(data)

    def _observe_header_byte(self, byte: int) -> None:
        if self._state == _HEADER:
            self._packets += 1
            if self._packets == 1:
                self._first_type = byte >> 4
            self._state, self._length, self._multiplier = _LENGTH, 0, 1
            self._publish_field = _TOPIC_LENGTH if byte >> 4 == _PUBLISH else None
            return
        self._length += (byte & 0x7F) * self._multiplier
        self._multiplier *= 128
        if byte & 0x80:
            return
        if self._length > self._max:
            self._refuse(PacketTooLarge(f"packet of {self._length} bytes; the limit is {self._max}"))
        self._left = self._length
        self._state = _BODY if self._length else _HEADER

    @property
    def connect_level(self) -> int | None:
        """The protocol level the client's CONNECT announced (4 for MQTT 3.1.1, 5 for MQTT 5),
        once read; None before, or if the first packet was no MQTT CONNECT. Read here because
        amqtt's parser may fail on an MQTT 5 CONNECT (its properties) before it looks at the level."""
        head = self._first_body
        if self._first_type != _CONNECT or len(head) <= _CONNECT_LEVEL_AT:
            return None
        if head[:_CONNECT_LEVEL_AT] != b"\x00\x04MQTT":
            return None
        return head[_CONNECT_LEVEL_AT]

    def _check_publish_field(self, data: bytes) -> None:
        if self._publish_field == _TOPIC_LENGTH:
            self._topic_length = int.from_bytes(data, "big") if len(data) == 2 else 0
            self._publish_field = _TOPIC if self._topic_length else None
            return
        self._publish_field = None
        if len(data) == self._topic_length and (b"+" in data or b"#" in data):
            self._refuse(FramingViolation("a PUBLISH topic may not contain the wildcards '+' or '#' [MQTT-3.3.2-2]"))

    def _refuse(self, error: FramingViolation) -> None:
        self.violation = str(error)
        raise error

    def feed_eof(self) -> None:
        self._inner.feed_eof()
