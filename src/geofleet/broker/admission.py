"""Reading a client's CONNECT and refusing it, before the broker touches any session.

amqtt reads the CONNECT and, in the same step, deletes (CleanSession=1) or takes over
(CleanSession=0) the session stored under the client id, before any authentication runs: a
device connecting with *another* device's client id, refused a moment later, had already
wiped that device's subscriptions or closed its connection. The broker therefore reads the
CONNECT here, decides, and only then lets amqtt near its sessions.

A client that opens a connection and never sends CONNECT is closed after a deadline, and such
connections are logged at DEBUG: they are routine (port scanners, load-balancer probes) and an
ERROR line each would let anyone fill the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from amqtt.mqtt.connack import IDENTIFIER_REJECTED, NOT_AUTHORIZED, UNACCEPTABLE_PROTOCOL_VERSION

from geofleet.broker.handler import DeviceHandler
from geofleet.domain.limits import payload_problem, topic_name_problem
from geofleet.domain.lru import BoundedCache

log = logging.getLogger(__name__)

CONNECT_DEADLINE_S = 5.0
"""How long a new connection may take to finish TLS, and then to send its CONNECT."""

REFUSED_NOT_AUTHORIZED = NOT_AUTHORIZED
REFUSED_IDENTIFIER = IDENTIFIER_REJECTED


@dataclass(frozen=True, slots=True)
class ConnectRead:
    handler: DeviceHandler
    session: Any
    """amqtt's Session built from the CONNECT (not yet stored anywhere)."""


async def read_connect(reader: Any, writer: Any, plugins: Any, deadline_s: float, peer: str) -> ConnectRead | None:
    """The CONNECT of a new connection, or None (the connection then is closed): nothing came in
    time, the client went away, or the packet is not a valid MQTT 3.1.1 CONNECT."""
    try:
        handler, session = await asyncio.wait_for(DeviceHandler.init_from_connect(reader, writer, plugins),
                                                  deadline_s)
    except TimeoutError:
        log.debug("%s sent no CONNECT within %.0f s: closing", peer, deadline_s)
    except Exception as exc:  # whatever the bytes were, the answer is to close
        level = getattr(reader, "connect_level", None)
        if level is not None and level != MQTT_311:
            _tell_unsupported(peer, level)
            await refuse(writer, UNACCEPTABLE_PROTOCOL_VERSION)  # if amqtt's parser failed first, it sent none
            return None
        log.debug("%s did not send a valid CONNECT (%s: %s): closing", peer, type(exc).__name__, exc)
    else:
        return ConnectRead(handler, session)
    await close(writer)
    return None


MQTT_311 = 4
"""The protocol level of MQTT 3.1.1, the only one spoken here (as amqtt)."""
_told: BoundedCache[str, bool] = BoundedCache(4096)
"""Client addresses already told, in the log, that their MQTT version is not spoken here."""


def _tell_unsupported(peer: str, level: int) -> None:
    """One WARNING per client address: an AWS IoT SDK sample built for MQTT 5 only sees "connect
    failed", so the operator must be able to read why; repeated retries stay quiet."""
    host = peer.rsplit(":", 1)[0]
    if _told.get(host):
        return
    _told.put(host, True)
    version = {5: "MQTT 5", 3: "MQTT 3.1"}.get(level, f"protocol level {level}")
    log.warning("%s connected with %s: refused with CONNACK 0x01 (unacceptable protocol version). geofleet speaks "
                "MQTT 3.1.1 (QoS 0 and 1): build the client's connection for MQTT 3.1.1 (AWS IoT Device SDK v2: "
                "awsiot.mqtt_connection_builder, not mqtt5_client_builder)", host, version)


def will_problem(session: Any) -> str | None:
    """Why the Last Will of this CONNECT is malformed or too large, or None (also if no will)."""
    if not session.will_flag:
        return None
    return topic_name_problem(session.will_topic or "") or payload_problem(session.will_message or b"")


async def refuse(writer: Any, return_code: int) -> None:
    """Answer CONNACK with Session Present 0 and ``return_code`` [MQTT-3.2.2-4], then close."""
    with contextlib.suppress(Exception):
        writer.write(bytes((0x20, 0x02, 0x00, return_code)))
        await writer.drain()
    await close(writer)


async def close(writer: Any) -> None:
    with contextlib.suppress(Exception):
        await writer.close()
