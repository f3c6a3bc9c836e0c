"""Offline geolocation of client addresses and the trusted-proxy rule for X-Forwarded-For."""

from __future__ import annotations

from pathlib import Path

import pytest

from geofleet.config import aws_region_coordinates
from geofleet.domain.geo import Location, Place, choose_home
from geofleet.domain.network import client_address, parse_networks
from geofleet.provisioning.geolocate import Geolocator

PROXIES = parse_networks(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(("peer", "header", "expected"), [
    ("10.1.2.3", "81.2.69.142", "81.2.69.142"),                      # our proxy says who the client is
    ("10.1.2.3", "8.8.8.8, 81.2.69.142", "81.2.69.142"),             # the client's own header is not believed
    ("10.1.2.3", "81.2.69.142, 10.9.9.9", "81.2.69.142"),            # through two of our proxies
    ("203.0.113.7", "81.2.69.142", "203.0.113.7"),                   # forged: not from a trusted proxy
    ("10.1.2.3", "not-an-ip", "10.1.2.3"),                           # malformed chain: believe the socket
    ("10.1.2.3", None, "10.1.2.3"),
    ("fd00::1", "2a00:1450:4001:80b::200e", "2a00:1450:4001:80b::200e"),
])
def test_forwarded_for_is_believed_only_from_trusted_proxies(peer: str, header: str | None, expected: str) -> None:
    assert client_address(peer, header, PROXIES) == expected


@pytest.mark.parametrize(("address", "country", "continent"), [
    ("8.8.8.8", "US", "NA"),
    ("81.2.69.142", "GB", "EU"),
    ("200.160.2.3", "BR", "SA"),
    ("41.0.0.1", "ZA", "AF"),
    ("133.11.0.1", "JP", "AS"),
    ("2a00:1450:4001:80b::200e", "IE", "EU"),
])
def test_addresses_locate_to_their_country(address: str, country: str, continent: str) -> None:
    location = Geolocator().locate(address)
    assert (location.country, location.continent) == (country, continent)
    assert location.has_coordinates


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "203.0.113.5", "::1", "garbage"])
def test_private_reserved_or_garbage_addresses_are_unknown(address: str) -> None:
    assert Geolocator().locate(address) == Location()


@pytest.mark.parametrize(("address", "home"), [
    ("81.2.69.142", "eu-west-1"),       # London -> the default fleet's European region
    ("8.8.8.8", "us-east-1"),
    ("133.11.0.1", "ap-southeast-1"),   # Tokyo -> nearest of the three
    ("200.160.2.3", "us-east-1"),       # Brazil -> nearer to Virginia than to Dublin
])
def test_devices_from_several_continents_get_their_home_in_the_default_fleet(address: str, home: str) -> None:
    coordinates = aws_region_coordinates()
    fleet = [Place(n, *coordinates[n]) for n in ("us-east-1", "eu-west-1", "ap-southeast-1")]
    assert choose_home(Geolocator().locate(address), fleet, default="us-east-1").home == home


def test_a_maxmind_city_database_gives_city_precision_first(tmp_path: Path) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-City", ipv4_compatible=True)
    writer.insert_network(IPSet(["81.2.69.0/24"]), {  # a London address, placed in Edinburgh by this file
        "country": {"iso_code": "GB"}, "continent": {"code": "EU"},
        "location": {"latitude": 55.95, "longitude": -3.19}})
    writer.insert_network(IPSet(["198.51.100.0/24"]), {"country": {"iso_code": "FR"}})  # no coordinates
    writer.to_db_file(str(tmp_path / "city.mmdb"))
    locator = Geolocator(tmp_path / "city.mmdb")
    assert locator.locate("81.2.69.142") == Location(55.95, -3.19, "GB", "EU")
    assert locator.locate("8.8.8.8").country == "US", "not in the file: the packaged data answers"
    assert locator.locate("198.51.100.7") == Location(), "no coordinates in the file, reserved address"


def test_region_weights_come_from_the_fleet_config() -> None:
    from geofleet.config import FleetConfig
    from geofleet.domain.errors import ConfigError

    fleet = FleetConfig.from_json({"regions": [{"name": "eu-west-3"}, {"name": "eu-central-1", "weight": 10}]})
    assert fleet.region("eu-central-1").weight == 10
    assert fleet.region("eu-west-3").weight == 1
    with pytest.raises(ConfigError, match="weight must be positive"):
        FleetConfig.from_json({"regions": [{"name": "eu-west-3", "weight": 0}]})
