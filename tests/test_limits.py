"""AWS IoT's MQTT limits as pure checks, and the reader that bounds packets before reading them."""

from __future__ import annotations

import asyncio

import pytest
from amqtt.adapters import BufferReader
from amqtt.mqtt.connect import ConnectPacket
from amqtt.mqtt.publish import PublishPacket

from geofleet.broker.framing import BoundedReader, FramingViolation, PacketTooLarge
from geofleet.domain.limits import (
    MAX_PACKET_BYTES,
    MAX_PAYLOAD_BYTES,
    client_id_problem,
    payload_problem,
    topic_filter_problem,
    topic_name_problem,
)
from tests.mqtt_wire import connect_packet, publish_header, publish_packet


def test_topic_size_and_depth() -> None:
    assert topic_name_problem("dt/a/" + "x" * 251) is None  # 256 bytes
    assert "257 bytes" in (topic_name_problem("dt/a/" + "x" * 252) or "")
    assert topic_name_problem("a/b/c/d/e/f/g/h") is None  # 7 slashes
    assert "8 '/'" in (topic_name_problem("a/b/c/d/e/f/g/h/i") or "")
    assert topic_name_problem("$aws/things/t/shadow/name/s/update/delta") is None
    assert "bytes" in (topic_name_problem("é" * 129) or ""), "the limit is on UTF-8 bytes, not characters"


def test_basic_ingest_prefix_counts_for_neither_limit() -> None:
    assert topic_name_problem("$aws/rules/my_rule/a/b/c/d/e/f/g/h") is None
    assert topic_name_problem("$aws/rules/my_rule/a/b/c/d/e/f/g/h/i") is not None
    assert topic_name_problem("$aws/rules/my_rule/" + "x" * 256) is None
    assert topic_filter_problem("$aws/things/a/b/c/d/e/f/g") is not None, "only Basic Ingest is exempt"


@pytest.mark.parametrize("topic", ["", "a/+", "a/#", "+", "a\x00b"])
def test_malformed_topic_names(topic: str) -> None:
    assert topic_name_problem(topic) is not None


def test_payload_and_client_id() -> None:
    assert payload_problem(b"x" * MAX_PAYLOAD_BYTES) is None
    assert payload_problem(b"x" * (MAX_PAYLOAD_BYTES + 1)) is not None
    assert client_id_problem("c" * 128) is None
    assert client_id_problem("c" * 129) is not None
    assert client_id_problem("") is not None


def _read_publish(data: bytes) -> PublishPacket:
    async def run() -> PublishPacket:
        return await PublishPacket.from_stream(BoundedReader(BufferReader(data), MAX_PACKET_BYTES))
    return asyncio.run(run())


def test_the_reader_passes_packets_within_the_limit() -> None:
    packet = _read_publish(publish_packet(b"dt/a/b", b"x" * MAX_PAYLOAD_BYTES) + publish_packet(b"t", b"2"))
    assert packet.topic_name == "dt/a/b"
    assert len(packet.data) == MAX_PAYLOAD_BYTES


def test_the_reader_refuses_an_oversized_packet_from_its_header() -> None:
    with pytest.raises(PacketTooLarge, match="10485"):  # nothing but the header was sent
        _read_publish(publish_header(b"dt/a/b", 10 * 1024 * 1024))


def test_the_reader_refuses_a_read_past_the_announced_length() -> None:
    lying = b"\x30\x03" + b"\x00\x08dt/a/b/c"  # says 3 bytes, carries a topic of 8
    with pytest.raises(FramingViolation):
        _read_publish(lying)


def test_the_reader_passes_an_empty_last_field() -> None:
    """A CONNECT ending in an empty will message: amqtt reads its 0 bytes after the packet's end."""
    async def run() -> ConnectPacket:
        data = connect_packet("device", will=("dt/device/gone", b"", False)) + b"\xc0\x00"
        return await ConnectPacket.from_stream(BoundedReader(BufferReader(data), MAX_PACKET_BYTES))
    packet = asyncio.run(run())
    assert packet.payload is not None
    assert packet.payload.will_message == b""


@pytest.mark.parametrize("topic", [b"dt/a/+", b"dt/#"])
def test_the_reader_refuses_a_wildcard_publish_topic_before_amqtt_reads_on(topic: bytes) -> None:
    """amqtt would discard the packet half-read and parse its payload as the next packets."""
    smuggled = b"\xc0\x00"  # a PINGREQ inside the payload
    with pytest.raises(FramingViolation, match="wildcards"):
        _read_publish(publish_packet(topic, smuggled))
