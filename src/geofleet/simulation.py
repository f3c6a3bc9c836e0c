"""Simulated devices: provisioned from addresses around the world, each with its own key, and
run with the device SDK (telemetry at QoS 1, shadow updates), all in one asyncio program.

Used by ``geofleet simulate``, ``geofleet drill``, ``make demo`` and the failover benchmark.
Devices are placed by the provisioning API's geolocation: the simulator sends each request
from ``source_address`` with an ``X-Forwarded-For`` address sampled in the device's country,
so the fleet must list ``source_address`` in ``trusted_proxies`` (``LocalFleet`` setups here do).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import iptocc

from geofleet.client import AdminClient
from geofleet.config import DataDir
from geofleet.device.bootstrap import Credentials, ProvisioningFailed, bootstrap
from geofleet.device.connection import DeviceClient
from geofleet.device.shadow import DeviceShadow
from geofleet.domain.enrollment import decode_key, device_key, encode_key
from geofleet.domain.errors import InvalidRequest, NotFound
from geofleet.domain.failover import FailoverOptions
from geofleet.domain.names import check_thing_name
from geofleet.pki.files import write_private

COUNTRIES = ("US", "BR", "GB", "DE", "FR", "IN", "JP", "AU", "SG", "ZA", "CA", "MX", "KR", "ES", "IT", "NL",
             "SE", "AR", "EG", "ID")
"""Where simulated devices come from, in turn."""
SOURCE_ADDRESS = "127.0.0.2"
Progress = Callable[[str], None]


def sample_addresses(count: int, seed: int = 7) -> list[tuple[str, str]]:
    """``count`` (IPv4 address, country) pairs, the countries of ``COUNTRIES`` in turn."""
    rng = random.Random(seed)
    pools: dict[str, list[str]] = {c: [] for c in COUNTRIES}
    wanted = -(-count // len(COUNTRIES))
    for _ in range(50):
        if all(len(p) >= wanted for p in pools.values()):
            break
        batch = [".".join(str(rng.randint(1, 223)) for _ in range(4)) for _ in range(20_000)]
        for address, country in zip(batch, iptocc.country_code(batch), strict=True):
            if country in pools and len(pools[country]) < wanted:
                pools[country].append(address)
    order = [c for c in COUNTRIES if pools[c]]
    picked = []
    for i in range(count):
        country = order[i % len(order)]
        pool = pools[country]  # reused round robin if a small country's pool ran short
        picked.append((pool[(i // len(order)) % len(pool)], country))
    return picked


@dataclass
class SimulatedDevice:
    credentials: Credentials
    country: str
    address: str
    client: DeviceClient | None = None
    shadow: DeviceShadow | None = None
    sent: int = 0
    """Telemetry messages handed to the outbox (sequence numbers 0..sent-1)."""
    commands: list[bytes] = field(default_factory=list)
    """What the application sent the device on ``cmd/<device>/...``."""

    @property
    def device_id(self) -> str:
        return self.credentials.device_id

    @property
    def home(self) -> str:
        return self.credentials.home_region

    @property
    def located(self) -> bool:
        """Whether the fleet placed the device by its (simulated) address: False when it answered
        "location unknown" (it did not believe the X-Forwarded-For) and used the default region."""
        return not any(r.startswith("location unknown") for r in self.credentials.reasons)


def provision(root: Path, count: int, out: Path, *, prefix: str | None = None, progress: Progress | None = None,
              source_address: str = SOURCE_ADDRESS, threads: int = 8) -> list[SimulatedDevice]:
    """Provision ``count`` devices (or pick up those provisioned before in ``out``).

    Device ids are ``<prefix>-<country>-<n>``. Without ``prefix``, a folder gets a fresh one
    (``sim-<random>``) the first time and keeps it, so a rerun reuses its devices and a new
    folder never collides with devices an earlier, deleted folder provisioned."""
    data = DataDir(root)
    config = data.config()
    out.mkdir(parents=True, exist_ok=True)
    group, group_key, prefix = _enrollment(data, out, prefix)
    urls = [r.http_url for r in config.regions]
    addresses = sample_addresses(count)

    def one(index: int) -> SimulatedDevice:
        address, country = addresses[index]
        device_id = f"{prefix}-{country.lower()}-{index:05d}"
        key = encode_key(device_key(decode_key(group_key), device_id))
        bootstrap_urls = urls[index % len(urls):] + urls[:index % len(urls)]  # spread over regions
        try:
            credentials = bootstrap(device_id, key, group, bootstrap_urls, data.root_ca, out,
                                    forwarded_for=address, local_address=source_address)
        except ProvisioningFailed as error:
            if "(409)" not in error.message:
                raise
            raise ProvisioningFailed(f"simulated device {device_id} already exists with another key (provisioned "
                                     f"from another folder): choose another prefix (--prefix) or folder") from None
        return SimulatedDevice(credentials, country, address)

    devices: list[SimulatedDevice] = []
    with ThreadPoolExecutor(threads) as pool:
        for device in pool.map(one, range(count)):
            devices.append(device)
            if progress is not None and len(devices) % max(1, count // 10) == 0:
                progress(f"provisioned {len(devices)}/{count}")
    return devices


def _enrollment(data: DataDir, out: Path, prefix: str | None, timeout: float = 10.0) -> tuple[str, str, str]:
    """The simulation's enrollment group (name, key) and device id prefix: made once, kept with
    the devices, and the group waited for in every region (it replicates) before any device
    asks there. A ``prefix`` given for a folder that has its own refuses to mix the two."""
    saved = out / "enrollment.json"
    if saved.exists():
        kept = json.loads(saved.read_text())
        kept_prefix = str(kept.get("prefix", "sim"))
        if prefix is not None and prefix != kept_prefix:
            raise InvalidRequest(f"{out} holds simulated devices with prefix {kept_prefix!r}, not {prefix!r}: "
                                 "use another folder for another prefix")
        return str(kept["group"]), str(kept["key"]), kept_prefix
    prefix = prefix or f"sim-{secrets.token_hex(2)}"
    check_thing_name(f"{prefix}-xx-00000")
    regions = [r.name for r in data.config().regions]
    name = f"simulated-{secrets.token_hex(3)}"
    with AdminClient(data, regions[0]) as api:
        key = str(api.call("POST", f"/enrollment-groups/{name}", json={})["key"])
    deadline = time.monotonic() + timeout
    for region in regions:
        with AdminClient(data, region) as api:
            while name not in {g["name"] for g in api.call("GET", "/enrollment-groups")["enrollmentGroups"]}:
                if time.monotonic() > deadline:
                    raise NotFound(f"enrollment group {name} did not reach {region} within {timeout:g} s")
                time.sleep(0.02)
    write_private(saved, json.dumps({"group": name, "key": key, "prefix": prefix}).encode())
    return name, key, prefix


@dataclass
class Simulation:
    """Runs devices: each publishes telemetry every ``interval_s`` (QoS 1) and, every
    ``shadow_every`` messages, reports its state to its shadow."""

    devices: list[SimulatedDevice]
    options: FailoverOptions = field(default_factory=FailoverOptions)
    concierge: list[str] = field(default_factory=list)
    interval_s: float = 5.0
    shadow_every: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _running: bool = False

    async def start(self) -> None:
        self._running = True
        for device in self.devices:
            client = DeviceClient.from_credentials(device.credentials, concierge=self.concierge, options=self.options)
            device.client = client
            client.on_session(self._hello_from(device))
            await client.subscribe(f"cmd/{device.device_id}/#", self._command_to(device))
            if self.shadow_every:
                device.shadow = DeviceShadow(client)
                await device.shadow.start()
            await client.start()
        self._tasks = [asyncio.create_task(self._telemetry(d)) for d in self.devices]

    @staticmethod
    def _command_to(device: SimulatedDevice) -> Callable[[str, bytes], None]:
        return lambda _topic, payload: device.commands.append(payload)

    def _hello_from(self, device: SimulatedDevice) -> Callable[[], Awaitable[None]]:
        """On every new session, one message at once: proves the device works there."""
        return lambda: self._publish(device)

    async def _publish(self, device: SimulatedDevice) -> None:
        assert device.client is not None
        body = {"seq": device.sent, "at": time.time(), "country": device.country}
        device.sent += 1
        await device.client.publish(f"dt/{device.device_id}/telemetry", json.dumps(body))

    async def _telemetry(self, device: SimulatedDevice) -> None:
        await asyncio.sleep(random.uniform(0, self.interval_s))
        while self._running:
            await self._publish(device)
            if self.shadow_every and device.shadow is not None and device.sent % self.shadow_every == 0 \
                    and device.client is not None and device.client.status.connected:
                with contextlib.suppress(Exception):  # one lost in a failover: the next one's job
                    await device.shadow.update(reported={"seq": device.sent, "region": device.client.status.region})
            await asyncio.sleep(self.interval_s * random.uniform(0.8, 1.2))

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.gather(*(d.client.wait_connected(timeout) for d in self.devices if d.client))

    def homes(self) -> Counter[str]:
        return Counter(d.home for d in self.devices)

    def where(self) -> Counter[str]:
        return Counter((d.client.status.region if d.client else None) or "offline" for d in self.devices)

    async def stop_publishing(self, flush_timeout: float) -> None:
        self._running = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(d.client.flush(flush_timeout) for d in self.devices if d.client))

    async def stop(self) -> None:
        self._running = False
        await asyncio.gather(*(d.client.stop() for d in self.devices if d.client))
