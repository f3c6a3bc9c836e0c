"""The fleet configuration and the layout of a data directory.

``geofleet init`` writes ``DIR/fleet.json`` and the PKI; every other command reads them. The
configuration is plain JSON so that operators can write and review it by hand:

    {"fleet": "acme", "account": "000000000000",
     "regions": [{"name": "eu-west-1", "host": "127.0.0.1", "mqtt_port": 18884,
                  "http_port": 18444, "peer_port": 18644, "hostnames": ["iot.eu.example.com"]}]}

A region's coordinates default to those of the AWS region of the same name.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import secrets
import socket
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from geofleet.domain.endpoints import Endpoint
from geofleet.domain.errors import ConfigError
from geofleet.domain.horizon import DEFAULT_GRACE_S
from geofleet.domain.jitr import HookConfig, parse_hook
from geofleet.domain.network import parse_networks
from geofleet.pki.files import write_private

DEFAULT_REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-1")
DEFAULT_MQTT_PORT = 18883
DEFAULT_HTTP_PORT = 18443
DEFAULT_PEER_PORT = 18643
DEFAULT_CHANGELOG_RETENTION_S = 6 * 3600.0
_REGION_NAME = re.compile(r"\A[a-z0-9][a-z0-9-]{0,62}\Z")  # \Z: "$" would let "name\n" through


@dataclass(frozen=True, slots=True)
class RegionConfig:
    name: str
    latitude: float
    longitude: float
    host: str = "127.0.0.1"
    mqtt_port: int = DEFAULT_MQTT_PORT
    http_port: int = DEFAULT_HTTP_PORT
    peer_port: int = DEFAULT_PEER_PORT
    """Replication between regions: HTTPS with mutual TLS, region certificates only."""
    hostnames: tuple[str, ...] = ()
    weight: float = 1.0
    """Region choice divides this region's distance by its weight (2: counts as half as far)."""

    @property
    def server_names(self) -> tuple[str, ...]:
        """Names the region's server certificate is valid for."""
        names = ["localhost", "127.0.0.1", self.host, *self.hostnames]
        return tuple(dict.fromkeys(n for n in names if n not in ("0.0.0.0", "::")))

    @property
    def address(self) -> str:
        """Where others reach this region: its first host name, else the address it binds."""
        if self.hostnames:
            return self.hostnames[0]
        return "localhost" if self.host in ("0.0.0.0", "::") else self.host

    @property
    def endpoint(self) -> Endpoint:
        """Where devices reach this region's broker."""
        return Endpoint(self.name, self.address, self.mqtt_port)

    @property
    def http_url(self) -> str:
        return f"https://{_url_host(self.address)}:{self.http_port}"

    @property
    def peer_url(self) -> str:
        return f"https://{_url_host(self.address)}:{self.peer_port}"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True, slots=True)
class FleetConfig:
    fleet: str
    regions: tuple[RegionConfig, ...]
    account: str = "000000000000"
    default_region: str = ""
    """Home of devices whose location is unknown (default: the first region)."""
    residency: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Country or continent code -> the regions its devices may live in."""
    trusted_proxies: tuple[str, ...] = ()
    """Networks (CIDR) whose X-Forwarded-For header provisioning believes."""
    geoip_database: str = ""
    """Optional MaxMind-format .mmdb (City) file for city-level geolocation; relative to the data dir."""
    failover_mode: str = "active-active"
    """``active-active`` (a device may use any healthy permitted region) or ``active-standby``
    (only its home's standby, and only while the home is down); see ``domain.endpoints``."""
    standby: dict[str, str] = field(default_factory=dict)
    """Region -> its standby in active-standby mode (default: the nearest other region)."""
    claim_token_ttl_s: int = 3600
    """How long a fleet-provisioning ownership token (and its PENDING_ACTIVATION certificate)
    lives before it must be used by RegisterThing (AWS: one hour)."""
    claim_requests_per_minute: int = 20
    """Fleet-provisioning requests one claim certificate may make per minute in one region."""
    claim_max_pending: int = 100
    """Certificates one claim certificate may have awaiting RegisterThing in one region."""
    jitr: HookConfig | None = None
    """The validation hook of just-in-time registration (fleet.json ``"jitr"``, see
    ``domain.jitr.HookConfig``); None: JITR certificates wait for an operator."""
    residency_global_attributes: tuple[str, ...] = ()
    """Thing attributes that every region keeps even for devices whose residency scope leaves it
    out, besides ``geofleet:homeRegion``, ``geofleet:regions`` and ``geofleet:failoverMode``
    (see ``domain.residency``): list only attributes that carry no personal data."""
    changelog_retention_s: float = DEFAULT_CHANGELOG_RETENTION_S
    """A region's change log is truncated once every peer pulled it, or after this long if a peer
    has not: a peer away longer catches up by anti-entropy (a full digest comparison)."""

    @property
    def home_default(self) -> str:
        return self.default_region or self.regions[0].name

    def port_clashes(self) -> list[str]:
        """Listeners that cannot run on one machine: two of them (any region, any of MQTT, HTTPS
        and peer) on the same port where the addresses overlap (equal, or one is a wildcard).
        Fine for regions on separate hosts; ``geofleet up`` runs them all here, so it refuses."""
        wildcards = ("0.0.0.0", "::", "")
        listeners = [(r.name, kind, r.host, port) for r in self.regions
                     for kind, port in (("mqtt", r.mqtt_port), ("https", r.http_port), ("peer", r.peer_port))]
        clashes = []
        for i, (name, kind, host, port) in enumerate(listeners):
            for other, other_kind, other_host, other_port in listeners[i + 1:]:
                if port == other_port and (host == other_host or host in wildcards or other_host in wildcards):
                    clashes.append(f"{name} {kind} and {other} {other_kind} both listen on port {port}")
        return clashes

    def region(self, name: str) -> RegionConfig:
        for region in self.regions:
            if region.name == name:
                return region
        known = ", ".join(r.name for r in self.regions)
        raise ConfigError(f"unknown region {name!r}; this fleet has: {known}")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for region in data["regions"]:
            region["hostnames"] = list(region["hostnames"])
        data["residency"] = {k: list(v) for k, v in self.residency.items()}
        data["trusted_proxies"] = list(self.trusted_proxies)
        data["residency_global_attributes"] = list(self.residency_global_attributes)
        data["jitr"] = self.jitr.to_json() if self.jitr is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FleetConfig:
        try:
            raw_regions = data["regions"]
            if not isinstance(raw_regions, list) or not raw_regions:
                raise ConfigError("the configuration needs a non-empty 'regions' list")
            regions = tuple(_region_from_json(i, r) for i, r in enumerate(raw_regions))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid fleet configuration: {exc}") from None
        names = [r.name for r in regions]
        if len(set(names)) != len(names):
            raise ConfigError(f"region names must be unique: {names}")
        ports = [(r.address, p) for r in regions for p in (r.mqtt_port, r.http_port, r.peer_port)]
        if len(set(ports)) != len(ports):
            raise ConfigError("every region needs its own MQTT, HTTP and peer ports on a host")
        default = str(data.get("default_region", ""))
        if default and default not in names:
            raise ConfigError(f"default_region {default!r} is not one of the regions {names}")
        residency = {str(k).upper(): tuple(str(r) for r in v) for k, v in dict(data.get("residency", {})).items()}
        trusted = tuple(str(n) for n in data.get("trusted_proxies", ()))
        try:
            parse_networks(trusted)
        except ValueError as exc:
            raise ConfigError(f"trusted_proxies: {exc}") from None
        mode = str(data.get("failover_mode", "active-active"))
        if mode not in ("active-active", "active-standby"):
            raise ConfigError(f"failover_mode must be 'active-active' or 'active-standby', not {mode!r}")
        standby = {str(k): str(v) for k, v in dict(data.get("standby", {})).items()}
        for primary, second in standby.items():
            if primary not in names or second not in names or primary == second:
                raise ConfigError(f"standby {primary!r} -> {second!r}: both must be regions of this fleet, "
                                  "and different")
        try:
            retention = _positive(data.get("changelog_retention_s", DEFAULT_CHANGELOG_RETENTION_S),
                                  "changelog_retention_s")
        except (TypeError, ValueError):
            raise ConfigError("changelog_retention_s must be a number of seconds") from None
        return cls(str(data.get("fleet", "geofleet")), regions, str(data.get("account", "000000000000")),
                   default, residency, trusted, str(data.get("geoip_database", "")), mode, standby,
                   changelog_retention_s=retention, jitr=parse_hook(data.get("jitr")),
                   claim_token_ttl_s=_positive_int(data.get("claim_token_ttl_s", 3600), "claim_token_ttl_s"),
                   claim_requests_per_minute=_positive_int(data.get("claim_requests_per_minute", 20),
                                                           "claim_requests_per_minute"),
                   claim_max_pending=_positive_int(data.get("claim_max_pending", 100), "claim_max_pending"),
                   residency_global_attributes=_names(data.get("residency_global_attributes", []),
                                                      "residency_global_attributes"))


def _names(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{what} must be a list of attribute names")
    return tuple(value)


def _positive_int(value: Any, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a whole number, not {value!r}") from None
    if number < 1 or number != value:
        raise ConfigError(f"{what} must be a whole number of at least 1, not {value!r}")
    return number


def _region_from_json(index: int, raw: dict[str, Any]) -> RegionConfig:
    name = str(raw["name"])
    if not _REGION_NAME.match(name):
        raise ConfigError(f"region name {name!r} must be lower-case letters, digits and '-'")
    known = aws_region_coordinates().get(name)
    lat = raw.get("latitude", known[0] if known else None)
    lon = raw.get("longitude", known[1] if known else None)
    if lat is None or lon is None:
        raise ConfigError(f"region {name!r} is not an AWS region name: give its latitude and longitude")
    return RegionConfig(
        name=name,
        latitude=float(lat),
        longitude=float(lon),
        host=str(raw.get("host", "127.0.0.1")),
        mqtt_port=int(raw.get("mqtt_port", DEFAULT_MQTT_PORT + index)),
        http_port=int(raw.get("http_port", DEFAULT_HTTP_PORT + index)),
        peer_port=int(raw.get("peer_port", DEFAULT_PEER_PORT + index)),
        hostnames=tuple(str(h) for h in raw.get("hostnames", ())),
        weight=_positive(raw.get("weight", 1.0), f"region {name!r} weight"),
    )


def _positive(value: Any, what: str) -> float:
    number = float(value)
    if number <= 0:
        raise ConfigError(f"{what} must be positive, not {value!r}")
    return number


def aws_region_coordinates() -> dict[str, tuple[float, float]]:
    """Approximate coordinates of the metro area each AWS region serves (shipped data)."""
    text = resources.files("geofleet").joinpath("data/aws-regions.csv").read_text()
    return {row["region"]: (float(row["latitude"]), float(row["longitude"]))
            for row in csv.DictReader(text.splitlines())}


def tombstone_grace_s() -> float:
    """``GEOFLEET_TOMBSTONE_GRACE_S`` (drills and tests shorten it), else a day: how old a
    tombstone must be before it may be collected (``domain.horizon``)."""
    return float(os.environ.get("GEOFLEET_TOMBSTONE_GRACE_S", DEFAULT_GRACE_S))


def default_config(free_ports: bool = False, regions: tuple[str, ...] = DEFAULT_REGIONS,
                   **settings: Any) -> FleetConfig:
    """AWS-named regions (default: three) on loopback; with ``free_ports``, on ports free right
    now (for tests, demos and benchmarks that must not collide with anything else running)."""
    raw: list[dict[str, Any]] = [{"name": n} for n in regions]
    if free_ports:
        ports = iter(_free_ports(3 * len(raw)))
        for region in raw:
            region.update(mqtt_port=next(ports), http_port=next(ports), peer_port=next(ports))
    return FleetConfig.from_json({"fleet": "geofleet", "regions": raw, **settings})


def _free_ports(count: int) -> list[int]:
    """Ports free now, chosen *below* the kernel's ephemeral range: a port from that range
    (what binding to port 0 gives) can be taken as the source port of any outgoing connection
    on this machine, so a region restarted on it could find it in use."""
    low = _ephemeral_range()[0]
    candidates = random.sample(range(min(10_000, low - count), low), k=min(low - 1_024, 4 * count + 64))
    ports: list[int] = []
    for port in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise ConfigError(f"could not find {count} free ports below {low} on 127.0.0.1")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999  # Linux's default


@dataclass(frozen=True, slots=True)
class RegionPaths:
    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key.pem"

    @property
    def server_chain(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key.pem"

    @property
    def peer_cert(self) -> Path:
        return self.root / "peer.pem"

    @property
    def peer_key(self) -> Path:
        return self.root / "peer.key.pem"

    @property
    def store(self) -> Path:
        return self.root / "store.db"

    @property
    def journal(self) -> Path:
        """The region's journal of device publishes for durable consumers (not replicated)."""
        return self.root / "journal.db"

    @property
    def lock(self) -> Path:
        """Held (flock) by the region's running process, for its whole life."""
        return self.root / "region.lock"

    @property
    def log(self) -> Path:
        return self.root / "node.log"


@dataclass(frozen=True, slots=True)
class DataDir:
    """Where everything of one fleet lives on this machine."""

    root: Path
    _cache: dict[str, FleetConfig] = field(default_factory=dict, compare=False, repr=False)

    @property
    def config_file(self) -> Path:
        return self.root / "fleet.json"

    @property
    def root_ca(self) -> Path:
        return self.root / "pki" / "root-ca.pem"

    @property
    def root_key(self) -> Path:
        return self.root / "pki" / "root-ca.key.pem"

    @property
    def trust_bundle(self) -> Path:
        """The root plus every region's intermediate: what servers verify client chains with."""
        return self.root / "pki" / "ca-bundle.pem"

    @property
    def peer_ca(self) -> Path:
        """The CA of region peer certificates (replication): trusted by nothing else."""
        return self.root / "pki" / "peer-ca.pem"

    @property
    def peer_ca_key(self) -> Path:
        return self.root / "pki" / "peer-ca.key.pem"

    @property
    def admin_token(self) -> Path:
        return self.root / "admin-token"

    @property
    def secrets_file(self) -> Path:
        """The fleet secret that the store's at-rest encryption keys derive from (never in a store)."""
        return self.root / "fleet-secret"

    @property
    def cluster_file(self) -> Path:
        return self.root / "cluster.json"

    def region(self, name: str) -> RegionPaths:
        return RegionPaths(self.root / "regions" / name)

    def config(self) -> FleetConfig:
        if "config" not in self._cache:
            if not self.config_file.exists():
                raise ConfigError(
                    f"no fleet in {self.root}: run 'geofleet init --data-dir {self.root}' first"
                )
            self._cache["config"] = FleetConfig.from_json(json.loads(self.config_file.read_text()))
        return self._cache["config"]

    def fleet_secret(self) -> bytes:
        """The fleet secret, made on first use for a data directory from before it existed; when
        regions start together, the first to link its file wins and the others read that one."""
        try:
            return bytes.fromhex(self.secrets_file.read_text().strip())
        except FileNotFoundError:
            pass
        except ValueError:
            raise ConfigError(f"{self.secrets_file} is not a hex secret; restore it from a backup") from None
        candidate = self.secrets_file.with_name(f"{self.secrets_file.name}.{secrets.token_hex(4)}.tmp")
        write_private(candidate, secrets.token_hex(32).encode() + b"\n")
        try:
            os.link(candidate, self.secrets_file)  # atomic, and refuses to replace another's
        except FileExistsError:
            pass
        finally:
            candidate.unlink()
        return self.fleet_secret()

    def token(self) -> str:
        try:
            return self.admin_token.read_text().strip()
        except FileNotFoundError:
            raise ConfigError(f"no admin token at {self.admin_token}: is this a geofleet data dir?") from None
