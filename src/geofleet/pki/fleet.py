"""Creating and loading the fleet's PKI files in a data directory."""

from __future__ import annotations

import json
import secrets

from geofleet.config import DataDir, FleetConfig
from geofleet.domain.errors import ConfigError
from geofleet.pki.ca import (
    Authority,
    cert_pem,
    create_intermediate,
    create_root,
    issue_leaf,
    key_pem,
    load_cert,
    load_key,
    new_key,
)
from geofleet.pki.files import private_dir, write_private, write_public


def initialize(data: DataDir, config: FleetConfig, passphrase: bytes | None = None) -> None:
    """Write the config, a root CA, one intermediate and one server certificate per region,
    the trust bundle and an admin token. Refuses to overwrite an existing fleet."""
    if data.config_file.exists():
        raise ConfigError(f"{data.root} already holds a fleet; choose an empty --data-dir")
    private_dir(data.root)
    root = create_root(config.fleet)
    write_private(data.root_key, key_pem(root.key, passphrase))
    write_public(data.root_ca, cert_pem(root.cert))
    bundle = [cert_pem(root.cert)]
    for region in config.regions:
        paths = data.region(region.name)
        intermediate = create_intermediate(root, region.name)
        write_private(paths.ca_key, key_pem(intermediate.key))
        write_public(paths.ca_cert, cert_pem(intermediate.cert))
        bundle.append(cert_pem(intermediate.cert))
        server_key = new_key()
        server = issue_leaf(intermediate, server_key.public_key(), f"geofleet region {region.name}",
                            server_names=region.server_names, client=True)
        write_private(paths.server_key, key_pem(server_key))
        write_public(paths.server_chain, cert_pem(server) + cert_pem(intermediate.cert))
    write_public(data.trust_bundle, b"".join(bundle))
    _peer_identities(data, config, passphrase)
    write_private(data.admin_token, secrets.token_urlsafe(32).encode() + b"\n")
    data.fleet_secret()  # made now, beside the admin token: the store's at-rest keys derive from it
    write_public(data.config_file, json.dumps(config.to_json(), indent=2).encode() + b"\n")


def _peer_identities(data: DataDir, config: FleetConfig, passphrase: bytes | None) -> None:
    """A CA of its own for region-to-region replication: its certificates are the only ones the
    replication listeners accept, so no device certificate can ever pull a change log."""
    peer_ca = create_root(config.fleet, "region peer CA")
    write_private(data.peer_ca_key, key_pem(peer_ca.key, passphrase))
    write_public(data.peer_ca, cert_pem(peer_ca.cert))
    for region in config.regions:
        paths = data.region(region.name)
        key = new_key()
        cert = issue_leaf(peer_ca, key.public_key(), region.name, server_names=region.server_names, client=True)
        write_private(paths.peer_key, key_pem(key))
        write_public(paths.peer_cert, cert_pem(cert))


def region_authority(data: DataDir, region: str) -> Authority:
    paths = data.region(region)
    try:
        return Authority(load_key(paths.ca_key.read_bytes()), load_cert(paths.ca_cert.read_bytes()))
    except FileNotFoundError as exc:
        raise ConfigError(f"region {region!r} has no CA in {paths.root}: {exc.strerror}") from None
