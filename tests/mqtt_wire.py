"""Raw MQTT 3.1.1 over mutual TLS, for tests that must send what a well-behaved client (paho)
refuses to send or cannot: another device's client id with exact CONNACK bytes, malformed
topics, a 10 MB packet header, a connection that never says anything."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import time
from pathlib import Path


def _string(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def _remaining_length(size: int) -> bytes:
    out = bytearray()
    while True:
        byte, size = size % 128, size // 128
        out.append(byte | (0x80 if size else 0))
        if not size:
            return bytes(out)


def connect_packet(client_id: str, *, clean: bool = True, keepalive: int = 30,
                   will: tuple[str, bytes, bool] | None = None) -> bytes:
    """CONNECT; ``will`` is (topic, message, retain), sent at QoS 0."""
    flags = 0x02 if clean else 0x00
    payload = _string(client_id.encode())
    if will is not None:
        topic, message, retain = will
        flags |= 0x04 | (0x20 if retain else 0)
        payload += _string(topic.encode()) + _string(message)
    body = _string(b"MQTT") + bytes((4, flags)) + keepalive.to_bytes(2, "big") + payload
    return b"\x10" + _remaining_length(len(body)) + body


def publish_header(topic: bytes, payload_size: int, *, retain: bool = False) -> bytes:
    """The start of a QoS 0 PUBLISH announcing ``payload_size`` bytes of payload."""
    variable = _string(topic)
    return bytes((0x30 | (0x01 if retain else 0),)) + _remaining_length(len(variable) + payload_size) + variable


def publish_packet(topic: bytes, payload: bytes, *, retain: bool = False) -> bytes:
    return publish_header(topic, len(payload), retain=retain) + payload


PINGREQ = b"\xc0\x00"


class RawClient:
    """One TLS connection to a region's MQTT port with a device's certificate."""

    def __init__(self, port: int, ca: Path, cert: Path | None, key: Path | None) -> None:
        context = ssl.create_default_context(cafile=str(ca))
        if cert is not None and key is not None:
            context.load_cert_chain(str(cert), str(key))
        raw = socket.create_connection(("localhost", port), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, size: int, timeout: float = 10.0) -> bytes:
        """Exactly ``size`` bytes, or fewer if the server closed the connection first."""
        self.sock.settimeout(timeout)
        data = b""
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while len(data) < size:
                chunk = self.sock.recv(size - len(data))
                if not chunk:
                    break
                data += chunk
        return data

    def connect(self, packet: bytes) -> bytes:
        """Send a CONNECT and return the CONNACK (4 bytes) or what came before the close."""
        self.send(packet)
        return self.read(4)

    def closed_by_server(self, timeout: float) -> bool:
        """True once the server has closed the connection (EOF or reset) within ``timeout``
        seconds; anything the server sends meanwhile is read and dropped."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                if not self.sock.recv(65536):
                    return True
            except TimeoutError:
                return False
            except (ConnectionError, ssl.SSLError):
                return True
        return False

    def reset(self) -> None:
        """Abort the connection with a TCP reset, as a device losing power mid-stream would."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()

    def close(self) -> None:
        """Drop the connection without DISCONNECT (the broker sees it as lost)."""
        with contextlib.suppress(OSError):
            self.sock.close()
