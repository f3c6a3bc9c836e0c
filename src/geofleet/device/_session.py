"""One MQTT session of a device with one region (private to ``geofleet.device``).

What is here is the part of the device that touches sockets: opening an aiomqtt client made
safe for failover, reading its messages, sending the outbox, and a TLS probe of a broker. The
decisions (where to go, when) are ``geofleet.domain.failover``'s, the loop that follows them is
``_loop.py``, and the facade that programs use is ``geofleet.device.connection.DeviceClient``.

Every socket has TCP_NODELAY: paho leaves Nagle's algorithm on, which was measured to stall a
QoS 1 round trip by 25 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt

from geofleet.domain.endpoints import Endpoint

NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


def new_client(endpoint: Endpoint, device_id: str, tls: ssl.SSLContext, keepalive_s: int,
               timeout: float) -> aiomqtt.Client:
    """A clean-session client; the MQTT keep-alive is half the device's (see ``FailoverOptions``)."""
    return aiomqtt.Client(endpoint.host, endpoint.port, identifier=device_id, tls_context=tls,
                          keepalive=max(1, keepalive_s // 2), timeout=timeout, clean_session=True,
                          socket_options=NODELAY)


async def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until they end, cancelling again those that did not: Python
    3.11's ``asyncio.wait_for`` swallows a cancellation that lands as its inner future completes
    (seen here: a PUBACK arriving as a session ended kept the sender looping, and the device
    stuck in that session for good)."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)


@contextlib.asynccontextmanager
async def session_of(client: aiomqtt.Client, timeout: float) -> AsyncIterator[None]:
    """``async with client``, made safe for failover: aiomqtt leaves the socket open (and still
    read by the event loop) when CONNACK does not come in time, and waits without bound for a
    DISCONNECT to be written on leaving; here a failed connect and a leave that takes longer
    than ``timeout`` drop the socket, so no stray session of this client id survives."""
    try:
        await client.__aenter__()
    except BaseException:
        _drop_socket(client)
        raise
    try:
        yield
    finally:
        try:
            await asyncio.wait_for(client.__aexit__(None, None, None), timeout)
        except asyncio.CancelledError:
            _drop_socket(client)
            raise
        except Exception:  # what ended the session (propagating now) matters more than this
            _drop_socket(client)


def _drop_socket(client: aiomqtt.Client) -> None:
    # paho has no public abort (``disconnect`` must write a packet first); its ``_sock_close``
    # runs aiomqtt's socket-close hook, which stops the event loop reading the socket.
    paho = client._client
    sock = paho.socket()
    if sock is None:
        return
    with contextlib.suppress(Exception):
        asyncio.get_running_loop().remove_writer(sock.fileno())
    with contextlib.suppress(Exception):
        paho._sock_close()


async def tls_reachable(endpoint: Endpoint, tls: ssl.SSLContext, timeout: float) -> bool:
    """Whether a TLS handshake with the endpoint completes: a cheap sign of a live broker."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(
            endpoint.host, endpoint.port, ssl=tls, server_hostname=endpoint.host, ssl_handshake_timeout=timeout),
            2 * timeout)
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    writer.transport.abort()  # no TLS close_notify exchange: waiting for it can hang on a busy broker
    return True
