"""The ``geofleet`` command, run as a real subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Fleet
from tests.helpers import geofleet


@pytest.mark.e2e
def test_init_default_config_has_three_aws_regions_on_loopback(tmp_path: Path) -> None:
    result = geofleet("init", "--data-dir", str(tmp_path / "d"), "--insecure-unencrypted-root")
    assert "us-east-1" in result.stdout
    config = json.loads((tmp_path / "d" / "fleet.json").read_text())
    regions = {r["name"]: r for r in config["regions"]}
    assert list(regions) == ["us-east-1", "eu-west-1", "ap-southeast-1"]
    assert (regions["eu-west-1"]["latitude"], regions["eu-west-1"]["longitude"]) == (53.35, -6.26)
    assert all(r["host"] == "127.0.0.1" for r in regions.values())
    assert "not encrypted" in result.stderr


@pytest.mark.e2e
def test_a_multi_host_config_warns_at_init_and_up_refuses_it_on_one_machine(tmp_path: Path) -> None:
    regions = [{"name": name, "host": "0.0.0.0", "mqtt_port": 8883, "http_port": 8443, "peer_port": 8643,
                "hostnames": [f"iot.{name}.acme.example"]} for name in ("us-east-1", "eu-west-1")]
    (tmp_path / "fleet.json").write_text(json.dumps({"fleet": "acme", "regions": regions}))
    data = str(tmp_path / "d")
    init = geofleet("init", "--data-dir", data, "--config", str(tmp_path / "fleet.json"), "--insecure-unencrypted-root")
    assert "warning: us-east-1 mqtt and eu-west-1 mqtt both listen on port 8883" in init.stderr
    up = geofleet("up", "--data-dir", data, check=False)
    assert up.returncode == 2
    assert "cannot all run on this machine" in up.stderr
    assert "Traceback" not in up.stderr


def test_bad_config_and_unknown_region_exit_2_with_a_message(tmp_path: Path, fleet: Fleet) -> None:
    (tmp_path / "bad.json").write_text('{"regions": [{"name": "mars-1"}]}')
    result = geofleet("init", "--data-dir", str(tmp_path / "d"), "--config", str(tmp_path / "bad.json"), check=False)
    assert result.returncode == 2
    assert "latitude" in result.stderr
    assert "Traceback" not in result.stderr
    result = geofleet("thing", "list", "--data-dir", str(fleet.data.root), "--region", "mars-1", check=False)
    assert result.returncode == 2
    assert "unknown region 'mars-1'" in result.stderr
    assert "us-east-1" in result.stderr
    result = geofleet("thing", "list", "--data-dir", str(tmp_path / "nowhere"), "--region", "us-east-1", check=False)
    assert result.returncode == 2
    assert "geofleet init" in result.stderr


def test_device_create_thing_shadow_and_revoke(fleet: Fleet, tmp_path: Path) -> None:
    name = fleet.new_name("cli")
    common = ["--data-dir", str(fleet.data.root), "--region", "eu-west-1"]
    created = json.loads(geofleet("device", "create", name, *common, "--out", str(tmp_path), "--json").stdout)
    assert (tmp_path / f"{name}.key.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / f"{name}.cert.pem").exists()
    assert (tmp_path / "root-ca.pem").exists()

    things = json.loads(geofleet("thing", "list", *common, "--json").stdout)
    assert name in [t["thingName"] for t in things]
    assert json.loads(geofleet("thing", "get", name, *common, "--json").stdout)["thingName"] == name
    assert geofleet("thing", "get", name, *common).stdout.startswith(f"{name}\t-\tv1")

    update = geofleet("shadow", "update", name, *common, "--state", '{"state":{"desired":{"on":true}}}')
    assert json.loads(update.stdout)["version"] == 1
    shadow = json.loads(geofleet("shadow", "get", name, *common).stdout)
    assert shadow["state"]["delta"] == {"on": True}
    bad = geofleet("shadow", "update", name, *common, "--state", "{nope", check=False)
    assert bad.returncode == 2
    assert "Invalid JSON" in bad.stderr

    revoked = json.loads(geofleet("cert", "revoke", "--thing", name, *common, "--json").stdout)
    assert revoked == [{"certificateId": created["certificateId"], "status": "REVOKED"}]
    again = geofleet("cert", "revoke", *common, check=False)
    assert again.returncode == 2
    assert "CERT_ID or --thing" in again.stderr


@pytest.mark.e2e
def test_region_down_is_a_clear_error(tmp_path: Path) -> None:
    geofleet("init", "--data-dir", str(tmp_path / "d"), "--insecure-unencrypted-root")
    result = geofleet("thing", "list", "--data-dir", str(tmp_path / "d"), "--region", "us-east-1", check=False)
    assert result.returncode == 1
    assert "did not answer" in result.stderr
    assert "is it running" in result.stderr
