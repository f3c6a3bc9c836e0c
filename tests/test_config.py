"""Fleet configuration: the README's multi-host example, defaults and clear refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from geofleet.config import FleetConfig, default_config
from geofleet.domain.errors import ConfigError


def test_the_readme_example_is_a_valid_multi_host_fleet() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    example = re.search(r"```json\n(.*?)```", readme, re.S)
    assert example is not None
    fleet = FleetConfig.from_json(json.loads(example.group(1)))
    us = fleet.region("us-east-1")
    assert us.peer_url == "https://iot.us.acme.example:8643"
    assert us.http_url == "https://iot.us.acme.example:8443"
    assert "iot.us.acme.example" in us.server_names
    assert "0.0.0.0" not in us.server_names
    assert (us.latitude, us.longitude) == (39.04, -77.49)


def test_regions_sharing_a_port_on_overlapping_addresses_are_named_as_clashes() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    multi_host = re.search(r"```json\n(.*?)```", readme, re.S)
    assert multi_host is not None
    clashes = FleetConfig.from_json(json.loads(multi_host.group(1))).port_clashes()
    assert "us-east-1 mqtt and eu-west-1 mqtt both listen on port 8883" in clashes
    assert len(clashes) == 3, "mqtt, https and peer"
    assert default_config().port_clashes() == []
    apart = FleetConfig.from_json({"regions": [
        {"name": "us-east-1", "host": "10.0.0.1"}, {"name": "eu-west-1", "host": "10.0.0.2"}]})
    assert apart.port_clashes() == [], "same ports on two addresses of one machine can coexist"


@pytest.mark.e2e
def test_free_ports_are_distinct() -> None:
    regions = default_config(free_ports=True).regions
    ports = [p for r in regions for p in (r.mqtt_port, r.http_port, r.peer_port)]
    assert len(set(ports)) == 9


@pytest.mark.parametrize(("regions", "message"), [
    ([], "non-empty 'regions'"),
    ([{"name": "us-east-1"}, {"name": "us-east-1", "mqtt_port": 1, "http_port": 2, "peer_port": 3}], "unique"),
    ([{"name": "us-east-1"}, {"name": "eu-west-1", "mqtt_port": 18883}], "own MQTT, HTTP and peer ports"),
    ([{"name": "Bad_Name"}], "lower-case"),
    ([{"name": "mars-1"}], "latitude and longitude"),
])
def test_bad_configs_are_refused_with_a_reason(regions: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FleetConfig.from_json({"regions": regions})
