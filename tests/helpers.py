"""Test helpers: real processes, real TLS, real MQTT clients, and waiting on conditions."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import paho.mqtt.client as mqtt
from hypothesis import settings
from paho.mqtt.enums import CallbackAPIVersion

T = TypeVar("T")


def examples(thorough: int) -> int:
    """A property test's example count: ``thorough`` under ``make test``; under ``make
    test-unit`` (``--hypothesis-profile=quick``) scaled down as the profile scales hypothesis'
    default of 100 examples (to a tenth)."""
    return max(1, thorough * settings().max_examples // 100)


def wait_for(condition: Callable[[], T | Literal[False] | None], timeout: float = 10.0, what: str = "condition",
             interval: float = 0.01) -> T:
    """Poll ``condition`` every ``interval`` seconds until it returns something truthy (returned,
    so a condition can be ``check() and value``); fail after ``timeout`` seconds. The benchmarks
    use it too (a condition there is often an HTTP call to a measured region, hence ``interval``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def geofleet(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess."""
    result = subprocess.run([sys.executable, "-m", "geofleet", *args], capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"geofleet {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int = 0

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Device:
    """A paho-mqtt client with a certificate, recording everything it receives."""

    client_id: str
    port: int
    ca: Path
    cert: Path | None
    key: Path | None
    clean: bool = True
    keepalive: int = 30
    messages: list[Received] = field(default_factory=list)
    connack: list[Any] = field(default_factory=list)
    disconnects: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  clean_session=self.clean)
        self.client.tls_set(ca_certs=str(self.ca), certfile=str(self.cert) if self.cert else None,
                            keyfile=str(self.key) if self.key else None)
        self.client.on_message = lambda c, u, m: self.messages.append(Received(m.topic, bytes(m.payload), m.qos))
        self.client.on_connect = lambda c, u, f, rc, p: self.connack.append(rc)
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnects.append(rc)
        self._lock = threading.Lock()

    def connect(self, timeout: float = 10.0) -> Device:
        self.client.connect("localhost", self.port, keepalive=self.keepalive)
        self.client.loop_start()
        wait_for(lambda: self.connack, timeout, f"CONNACK for {self.client_id}")
        if self.connack[-1].is_failure:
            raise ConnectionRefusedError(str(self.connack[-1]))
        return self

    def try_connect(self, timeout: float = 5.0) -> bool:
        """True if the broker accepted; False if it refused or closed the connection. May be
        called again (after a refusal) on the same device."""
        self.connack.clear()
        self.disconnects.clear()
        try:
            self.client.connect("localhost", self.port, keepalive=self.keepalive)
        except (ssl.SSLError, OSError):
            return False
        self.client.loop_start()
        try:
            wait_for(lambda: self.connack or self.disconnects, timeout, "CONNACK or close")
        finally:
            self.client.loop_stop()
        return bool(self.connack) and not self.connack[-1].is_failure and not self.disconnects

    def subscribe(self, *topics: str, qos: int = 1) -> list[int]:
        granted: list[Any] = []
        done = threading.Event()

        def on_subscribe(c: Any, u: Any, mid: int, codes: list[Any], p: Any) -> None:
            granted.extend(codes)
            done.set()

        self.client.on_subscribe = on_subscribe
        self.client.subscribe([(t, qos) for t in topics])
        assert done.wait(10), "no SUBACK"
        return [c.value for c in granted]

    def publish(self, topic: str, payload: bytes | str | dict[str, Any] = b"", qos: int = 1) -> None:
        data = json.dumps(payload) if isinstance(payload, dict) else payload
        self.client.publish(topic, data, qos).wait_for_publish(10)

    def wait_message(self, topic: str, timeout: float = 10.0, since: int = 0) -> Received:
        return wait_for(lambda: next((m for m in self.messages[since:] if m.topic == topic), None), timeout,
                        f"a message on {topic}")

    def request(self, topic: str, payload: Any, answer_suffixes: tuple[str, ...] = ("accepted", "rejected"),
                timeout: float = 10.0) -> Received:
        """Publish a shadow request and wait for its /accepted or /rejected answer."""
        start = len(self.messages)
        self.publish(topic, payload)
        answers = {f"{topic}/{s}" for s in answer_suffixes}
        return wait_for(lambda: next((m for m in self.messages[start:] if m.topic in answers), None), timeout,
                        f"an answer to {topic}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
