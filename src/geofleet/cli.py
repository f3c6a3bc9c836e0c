"""The ``geofleet`` command.

Every command that prints data takes ``--json``. Errors print one line on stderr and exit with
2 for bad input (unknown region, malformed file) and 1 when the fleet refused or failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from geofleet.client import CERTIFICATES, THINGS, AdminClient, Listing, fleet_app, named_shadows
from geofleet.config import DataDir, FleetConfig, default_config
from geofleet.domain.endpoints import HOME_ATTRIBUTE
from geofleet.domain.errors import ConfigError, GeofleetError, RegionUnreachable
from geofleet.domain.names import check_thing_name
from geofleet.domain.policy import DEFAULT_POLICY_NAME
from geofleet.domain.residency import WrongRegion
from geofleet.pki.ca import key_pem, make_csr, new_key
from geofleet.pki.files import write_private, write_public

app = typer.Typer(
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Run an IoT fleet across regions as one fleet.",
)
region_app = typer.Typer(no_args_is_help=True, help="Run one region node.")
device_app = typer.Typer(no_args_is_help=True, help="Create device credentials.")
thing_app = typer.Typer(no_args_is_help=True, help="Read the thing registry.")
cert_app = typer.Typer(no_args_is_help=True, help="Manage certificates.")
shadow_app = typer.Typer(no_args_is_help=True, help="Read and update device shadows.")
replication_app = typer.Typer(no_args_is_help=True, help="Watch replication between regions.")
enrollment_app = typer.Typer(no_args_is_help=True, help="Who may provision devices: enrollment groups.")
rule_app = typer.Typer(no_args_is_help=True, help="Topic rules: republish, forward, webhooks.")
app.add_typer(region_app, name="region")
app.add_typer(device_app, name="device")
app.add_typer(thing_app, name="thing")
app.add_typer(cert_app, name="cert")
app.add_typer(shadow_app, name="shadow")
app.add_typer(replication_app, name="replication")
app.add_typer(enrollment_app, name="enrollment")
ca_app = typer.Typer(no_args_is_help=True, help="Customer CAs for just-in-time registration (JITR).")
app.add_typer(ca_app, name="ca")
app.add_typer(rule_app, name="rule")
consumer_app = typer.Typer(no_args_is_help=True, help="Durable application consumers: every matching message, "
                                                      "at least once, from every region.")
app.add_typer(consumer_app, name="consumer")
residency_app = typer.Typer(no_args_is_help=True, help="Data residency: where devices' data rests.")
app.add_typer(residency_app, name="residency")

DataDirOpt = Annotated[Path, typer.Option("--data-dir", help="The fleet's data directory.")]
RegionOpt = Annotated[str, typer.Option("--region", help="Which region to ask.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
MaxResultsOpt = Annotated[int | None, typer.Option("--max-results", min=1, max=250, help="One page of this size.")]
NextTokenOpt = Annotated[str | None, typer.Option("--next-token", help="The page after a previous one.")]


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"geofleet: {message}", err=True)
    raise typer.Exit(code)


def _print(data: Any, as_json: bool, text: str | None = None) -> None:
    if as_json or text is None:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        typer.echo(text)


def _progress(line: str) -> None:
    """Progress of long commands goes to stderr, so that stdout (with --json) stays parseable."""
    typer.echo(line, err=True)


def _client(data_dir: Path, region: str) -> AdminClient:
    return AdminClient(DataDir(data_dir), region)


@app.command()
def init(
    data_dir: DataDirOpt,
    config: Annotated[Path | None, typer.Option("--config", help="Fleet config (JSON); default: 3 regions.")] = None,
    passphrase_env: Annotated[str, typer.Option(help="Env var holding a passphrase for the root key.")]
    = "GEOFLEET_ROOT_PASSPHRASE",
    free_ports: Annotated[bool, typer.Option("--free-ports", help="Default regions on ports free now.")] = False,
    insecure_unencrypted_root: Annotated[bool, typer.Option(
        "--insecure-unencrypted-root", help="Leave the root CA keys unencrypted (throw-away dev fleets only).")]
    = False,
) -> None:
    """Create a fleet: its config, root CA, one intermediate CA and server certificate per region.

    The root and peer CA keys are encrypted with the passphrase in $GEOFLEET_ROOT_PASSPHRASE
    (PBKDF2-SHA256, 600,000 rounds); without one, init refuses unless --insecure-unencrypted-root."""
    from geofleet.pki.fleet import initialize

    if config is None:
        fleet = default_config(free_ports)
    else:
        try:
            fleet = FleetConfig.from_json(json.loads(config.read_text()))
        except (OSError, ValueError) as exc:
            _fail(f"cannot read {config}: {exc}", 2)
    passphrase = os.environ.get(passphrase_env)
    if not passphrase and not insecure_unencrypted_root:
        _fail(f"the root CA key needs a passphrase: set {passphrase_env} (then keep the root offline, see "
              "README), or pass --insecure-unencrypted-root for a throw-away dev fleet", 2)
    initialize(DataDir(data_dir), fleet, passphrase.encode() if passphrase else None)
    names = ", ".join(f"{r.name} (mqtts :{r.mqtt_port}, https :{r.http_port})" for r in fleet.regions)
    typer.echo(f"fleet {fleet.fleet!r} created in {data_dir}: {names}")
    for clash in fleet.port_clashes():
        _progress(f"warning: {clash}: fine for regions on separate hosts, but they cannot run on one machine "
                  "(geofleet up refuses); give each region its own ports to run them here")
    if not passphrase:
        typer.echo(f"WARNING: the root CA keys in {DataDir(data_dir).root_key.parent} are not encrypted: anyone "
                   "who reads them can issue certificates for any region; dev use only", err=True)


@region_app.command("run")
def region_run(
    name: str,
    data_dir: DataDirOpt,
    log_level: Annotated[str, typer.Option(help="Python log level.")] = "INFO",
) -> None:
    """Run one region node in the foreground until SIGINT or SIGTERM."""
    from geofleet.region.node import RegionNode
    from geofleet.supervisor import before_region_run

    before_region_run(DataDir(data_dir), name)

    logging.basicConfig(level=log_level.upper(), format=f"%(asctime)s {name} %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per peer call (health polls: every second)
    for noisy in ("amqtt", "transitions", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    node = RegionNode(DataDir(data_dir), name)
    asyncio.run(node.run())


@region_app.command("restart")
def region_restart(
    name: str,
    data_dir: DataDirOpt,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the region to serve again.")] = 60.0,
) -> None:
    """Restart one region of a fleet that 'geofleet up' runs, and wait until it serves again."""
    from geofleet.supervisor import restart_region

    data = DataDir(data_dir)

    def ready() -> bool:
        with contextlib.suppress(GeofleetError, OSError), _client(data_dir, name) as api:
            return api.call("GET", "/health").get("status") in ("ok", "degraded")
        return False

    pid = restart_region(data, name, ready, timeout)
    typer.echo(f"region {name} restarted (pid {pid})")


@app.command()
def up(
    data_dir: DataDirOpt,
    no_restart: Annotated[bool, typer.Option("--no-restart", help="Leave a region that exits down (drills).")]
    = False,
) -> None:
    """Run every region of the fleet on this machine, each its own process, until SIGINT/SIGTERM;
    a region that exits is started again (with a backoff if it keeps failing)."""
    from geofleet.cluster import run_fleet

    raise typer.Exit(run_fleet(DataDir(data_dir), restart=not no_restart))


@device_app.command("create")
def device_create(
    name: str,
    data_dir: DataDirOpt,
    region: RegionOpt,
    out: Annotated[Path, typer.Option("--out", help="Where to write NAME.cert.pem, NAME.key.pem, root-ca.pem.")],
    policy: Annotated[str, typer.Option(help="Policy to attach.")] = DEFAULT_POLICY_NAME,
    as_json: JsonOpt = False,
) -> None:
    """Make a key and CSR here, have REGION sign it, create the thing and attach the policy."""
    check_thing_name(name)
    data = DataDir(data_dir)
    key = new_key()
    with _client(data_dir, region) as api:
        api.call("POST", f"/things/{name}", json={"attributes": {HOME_ATTRIBUTE: region}})
        cert = api.call("POST", "/certificates/from-csr",
                        json={"certificateSigningRequest": make_csr(key, name).decode(), "setAsActive": True})
        cert_id = cert["certificateId"]
        api.call("PUT", f"/policies/{policy}/targets/{cert_id}")
        api.call("PUT", f"/things/{name}/principals/{cert_id}")
    write_private(out / f"{name}.key.pem", key_pem(key))
    write_public(out / f"{name}.cert.pem", cert["certificatePem"].encode())
    write_public(out / "root-ca.pem", data.root_ca.read_bytes())
    result = {"thingName": name, "certificateId": cert_id, "region": region,
              "certificate": str(out / f"{name}.cert.pem"), "key": str(out / f"{name}.key.pem"),
              "rootCa": str(out / "root-ca.pem")}
    _print(result, as_json, f"device {name} created in {region}: certificate {cert_id[:16]}..., files in {out}")


def _thing_line(thing: dict[str, Any]) -> str:
    return f"{thing['thingName']}\t{thing.get('thingTypeName') or '-'}\tv{thing['version']}"


@thing_app.command("list")
def thing_list(data_dir: DataDirOpt, region: RegionOpt, as_json: JsonOpt = False,
               max_results: MaxResultsOpt = None, next_token: NextTokenOpt = None) -> None:
    """List the things a region knows (every page, unless --max-results or --next-token asks for one)."""
    things, token = _listing(data_dir, region, THINGS, max_results, next_token)
    text = "\n".join(_thing_line(t) for t in things)
    _print_page(things, token, as_json, text or "(no things)")


@cert_app.command("list")
def cert_list(data_dir: DataDirOpt, region: RegionOpt, as_json: JsonOpt = False,
              max_results: MaxResultsOpt = None, next_token: NextTokenOpt = None) -> None:
    """List the certificates a region knows (every page, unless --max-results or --next-token asks for one)."""
    certificates, token = _listing(data_dir, region, CERTIFICATES, max_results, next_token)
    text = "\n".join(f"{c['certificateId']}\t{c['status']}" for c in certificates)
    _print_page(certificates, token, as_json, text or "(no certificates)")


def _listing(data_dir: Path, region: str, listing: Listing, max_results: int | None, next_token: str | None
             ) -> tuple[list[Any], str | None]:
    """One page when asked for (``--max-results``/``--next-token``), else every page."""
    with _client(data_dir, region) as api:
        if max_results is None and next_token is None:
            return list(api.every(listing)), None
        return api.page(listing, max_results, next_token)


def _print_page(items: list[Any], token: str | None, as_json: bool, text: str) -> None:
    if as_json:
        _print({"items": items, "nextToken": token} if token else items, True)
        return
    _print(items, False, text)
    if token:
        _progress(f"more: --next-token {token}")


@thing_app.command("get")
def thing_get(name: str, data_dir: DataDirOpt, region: RegionOpt, as_json: JsonOpt = False) -> None:
    """Show one thing."""
    with _client(data_dir, region) as api:
        thing = api.call("GET", f"/things/{name}")
    attributes = ", ".join(f"{k}={v}" for k, v in sorted(thing["attributes"].items())) or "no attributes"
    _print(thing, as_json, f"{_thing_line(thing)}\t{attributes}")


@cert_app.command("revoke")
def cert_revoke(
    data_dir: DataDirOpt,
    region: RegionOpt,
    cert_id: Annotated[str | None, typer.Argument(help="Certificate id (hex SHA-256).")] = None,
    thing: Annotated[str | None, typer.Option("--thing", help="Revoke every certificate of this thing.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a certificate (for good): its live sessions are closed at once."""
    if (cert_id is None) == (thing is None):
        _fail("give either a CERT_ID or --thing NAME", 2)
    with _client(data_dir, region) as api:
        ids = [cert_id] if cert_id else api.call("GET", f"/things/{thing}/principals")["principals"]
        if not ids:
            _fail(f"thing {thing!r} has no certificates attached")
        revoked = [api.call("POST", f"/certificates/{i}/revoke") for i in ids]
    summary = [{"certificateId": r["certificateId"], "status": r["status"]} for r in revoked]
    _print(summary, as_json, "\n".join(f"revoked {r['certificateId']}" for r in revoked))


@shadow_app.command("get")
def shadow_get(
    thing: str,
    data_dir: DataDirOpt,
    region: RegionOpt,
    name: Annotated[str, typer.Option("--name", help="Named shadow; default the classic shadow.")] = "",
) -> None:
    """Print a shadow document."""
    with _client(data_dir, region) as api:
        _print(api.call("GET", f"/things/{thing}/shadow", params={"name": name} if name else None), True)


@shadow_app.command("list")
def shadow_list(thing: str, data_dir: DataDirOpt, region: RegionOpt, as_json: JsonOpt = False,
                max_results: MaxResultsOpt = None, next_token: NextTokenOpt = None) -> None:
    """List a thing's named shadows (every page, unless --max-results or --next-token asks for one)."""
    names, token = _listing(data_dir, region, named_shadows(thing), max_results, next_token)
    _print_page(names, token, as_json, "\n".join(names) or "(no named shadows)")


@shadow_app.command("update")
def shadow_update(
    thing: str,
    data_dir: DataDirOpt,
    region: RegionOpt,
    state: Annotated[str, typer.Option("--state", help='Update document, e.g. \'{"state":{"desired":{"on":true}}}\'.')],
    name: Annotated[str, typer.Option("--name", help="Named shadow; default the classic shadow.")] = "",
) -> None:
    """Update a shadow with an AWS update document."""
    with _client(data_dir, region) as api:
        answer = api.call("POST", f"/things/{thing}/shadow", params={"name": name} if name else None,
                          content=state.encode(), headers={"Content-Type": "application/json"})
    _print(answer, True)


@replication_app.command("status")
def replication_status(data_dir: DataDirOpt, as_json: JsonOpt = False) -> None:
    """Per pair of regions: lag, backlog, last error, and whether their digests agreed."""
    data = DataDir(data_dir)
    rows: list[dict[str, Any]] = []
    for region in data.config().regions:
        try:
            with _client(data_dir, region.name) as api:
                report = api.call("GET", "/replication/status")
        except GeofleetError as error:
            rows.append({"source": "*", "target": region.name, "lastError": error.message})
            continue
        rows += [{"source": peer, "target": region.name, **link} for peer, link in report["links"].items()]
    lines = [f"{'source':16} {'target':16} {'lag ms':>8} {'backlog':>8} {'digests':8} error"]
    for row in rows:
        lag = row.get("lagMs")
        agree = {True: "agree", False: "differ", None: "-"}[row.get("digestsAgree")]
        lines.append(f"{row['source']:16} {row['target']:16} {'-' if lag is None else f'{lag:.0f}':>8} "
                     f"{row.get('backlog', '-')!s:>8} {agree:8} {row.get('lastError') or ''}")
    _print(rows, as_json, "\n".join(lines))


@enrollment_app.command("create")
def enrollment_create(
    name: str,
    data_dir: DataDirOpt,
    region: RegionOpt,
    policy: Annotated[str, typer.Option(help="Policy its devices get.")] = DEFAULT_POLICY_NAME,
    allowed_region: Annotated[list[str] | None, typer.Option("--allowed-region", help="Repeatable.")] = None,
    reprovision: Annotated[bool, typer.Option(help="Allow a provisioned device to come back with a new key.")] = False,
    require_csr: Annotated[bool, typer.Option(help="Devices must bring a CSR: refuse fleet provisioning's "
                                                   "CreateKeysAndCertificate.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create an enrollment group; prints its secret key (shown this once)."""
    with _client(data_dir, region) as api:
        group = api.call("POST", f"/enrollment-groups/{name}", json={
            "policyName": policy, "allowedRegions": allowed_region or None, "reprovision": reprovision,
            "requireCsr": require_csr})
    _print(group, as_json, f"enrollment group {name} created; its key (keep it secret, shown once):\n{group['key']}")


@enrollment_app.command("list")
def enrollment_list(data_dir: DataDirOpt, region: RegionOpt, as_json: JsonOpt = False) -> None:
    """List enrollment groups (without their keys)."""
    with _client(data_dir, region) as api:
        groups = api.call("GET", "/enrollment-groups")["enrollmentGroups"]
    lines = [f"{g['name']}\t{g['policyName']}\t{'revoked' if g['revoked'] else 'active'}" for g in groups]
    _print(groups, as_json, "\n".join(lines) or "(no enrollment groups)")


@enrollment_app.command("revoke")
def enrollment_revoke(name: str, data_dir: DataDirOpt, region: RegionOpt) -> None:
    """Revoke a group: none of its devices can provision any more."""
    with _client(data_dir, region) as api:
        api.call("POST", f"/enrollment-groups/{name}/revoke")
    typer.echo(f"enrollment group {name} revoked")


@consumer_app.command("create")
def consumer_create(
    name: str,
    data_dir: DataDirOpt,
    region: RegionOpt,
    topic_filter: Annotated[list[str], typer.Option("--filter", help="An MQTT topic filter (repeatable, at most 8).")],
    as_json: JsonOpt = False,
) -> None:
    """Create a consumer, or replace its filters; every region journals what matches from then on."""
    with _client(data_dir, region) as api:
        consumer = api.call("PUT", f"/v1/consumers/{name}", json={"filters": topic_filter})
    _print(consumer, as_json, f"consumer {name}: {' '.join(consumer['filters'])}")


@consumer_app.command("list")
def consumer_list(data_dir: DataDirOpt, region: RegionOpt, as_json: JsonOpt = False) -> None:
    """List consumers and their filters."""
    with _client(data_dir, region) as api:
        consumers = api.call("GET", "/v1/consumers")["consumers"]
    lines = [f"{c['consumerName']}\t{' '.join(c['filters'])}" for c in consumers]
    _print(consumers, as_json, "\n".join(lines) or "(no consumers)")


@consumer_app.command("delete")
def consumer_delete(name: str, data_dir: DataDirOpt, region: RegionOpt) -> None:
    """Delete a consumer: regions stop journaling for it and forget its offsets."""
    with _client(data_dir, region) as api:
        api.call("DELETE", f"/v1/consumers/{name}")
    typer.echo(f"consumer {name} deleted")


@enrollment_app.command("device-key")
def enrollment_device_key(
    device_id: Annotated[str, typer.Option("--device-id")],
    group_key: Annotated[str, typer.Option("--group-key", help="The group's key (base64).")],
) -> None:
    """Derive a device's enrollment key at the factory (offline)."""
    from geofleet.domain.enrollment import decode_key, device_key, encode_key

    check_thing_name(device_id)
    typer.echo(encode_key(device_key(decode_key(group_key), device_id)))


@device_app.command("move")
def device_move(
    name: str,
    data_dir: DataDirOpt,
    region: RegionOpt,
    to: Annotated[str, typer.Option("--to", help="The device's new home region.")],
    regions: Annotated[str | None, typer.Option(
        "--regions", help="Its permitted regions from now on, comma-separated (where its data may rest); "
                          "default: they stay, and --to must be one of them.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Move a device's home region, and with --regions its permitted regions (its data follows).

    Only a region in both its old and its new permitted regions may make the move: asked
    elsewhere, the command follows the fleet's answer to such a region."""
    body: dict[str, Any] = {"region": to}
    if regions is not None:
        body["regions"] = [r.strip() for r in regions.split(",") if r.strip()]
    moved = _call_following(data_dir, region, "POST", f"/things/{name}/move", json=body)
    order = " > ".join(e["region"] for e in moved["endpoints"])
    _print(moved, as_json, f"device {name} now lives in {to}; endpoints: {order}")


def _call_following(data_dir: Path, region: str, method: str, path: str, **kwargs: Any) -> Any:
    """Call ``region``; when it answers WrongRegion (421), call the regions it names instead, the
    first that answers (their URLs are in fleet.json)."""
    try:
        with _client(data_dir, region) as api:
            return api.call(method, path, **kwargs)
    except WrongRegion as wrong:
        known = {r.name for r in DataDir(data_dir).config().regions}
        named = [r for r in wrong.regions if r in known]
        if not named:
            raise
        unreachable: list[str] = []
        for other in named:
            _progress(f"{region} may not do this for the device: asking {other}")
            try:
                with _client(data_dir, other) as api:
                    return api.call(method, path, **kwargs)
            except RegionUnreachable as error:
                unreachable.append(error.message)
        raise RegionUnreachable("; ".join(unreachable)) from None


@device_app.command("bootstrap")
def device_bootstrap(
    device_id: Annotated[str, typer.Option("--device-id")],
    enrollment_key: Annotated[str, typer.Option("--enrollment-key", help="This device's key (base64).")],
    bootstrap_url: Annotated[list[str], typer.Option("--bootstrap", help="A region's HTTPS URL; repeatable.")],
    root_ca: Annotated[Path, typer.Option("--root-ca", help="The fleet root CA the device trusts.")],
    out: Annotated[Path, typer.Option("--out", help="Where the device keeps its credentials.")],
    group: Annotated[str | None, typer.Option("--group", help="Its enrollment group (none: individual).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Provision this device once: key made here, CSR signed by the fleet, credentials stored 0600."""
    from geofleet.device import bootstrap

    check_thing_name(device_id)
    credentials = bootstrap(device_id, enrollment_key, group, bootstrap_url, root_ca, out)
    result = {"deviceId": device_id, "homeRegion": credentials.home_region,
              "endpoints": [e.to_json() for e in credentials.endpoints], "reasons": list(credentials.reasons),
              "alreadyProvisioned": not credentials.fresh,
              "certificate": str(credentials.cert_file), "key": str(credentials.key_file)}
    what = "provisioned" if credentials.fresh else f"already provisioned (credentials read from {out})"
    why = "".join(f"\n  - {reason}" for reason in credentials.reasons)
    _print(result, as_json, f"device {device_id} {what}; home region {credentials.home_region}"
           f"{'; because:' if why else ''}{why}\nfiles in {out}")


@app.command()
def locate(device: str, data_dir: DataDirOpt, as_json: JsonOpt = False) -> None:
    """Where a device is connected now, from the replicated presence directory."""

    check_thing_name(device)

    async def ask() -> Any:
        async with fleet_app(data_dir) as fleet:
            return await fleet.locate(device)

    where = asyncio.run(ask())
    seen = (where.last_seen or {}).get("region")
    text = (f"{device} is connected to {where.region} (session {where.session_id})" if where.connected
            else f"{device} is offline; last seen in {seen}")
    _print({"device": device, "connected": where.connected, "region": where.region, "sessionId": where.session_id,
            "connectedAt": where.connected_at, "lastSeen": where.last_seen, "answeredBy": where.answered_by},
           as_json, text)


@app.command()
def send(
    device: str,
    topic: str,
    payload: str,
    data_dir: DataDirOpt,
    timeout: Annotated[float, typer.Option(help="Seconds to keep trying while the device is offline.")] = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """Send a message to a device through the region where it is connected (QoS 1)."""

    check_thing_name(device)

    async def deliver() -> str:
        async with fleet_app(data_dir) as fleet:
            return await fleet.send(device, topic, payload, timeout=timeout)

    region = asyncio.run(deliver())
    _print({"device": device, "topic": topic, "deliveredBy": region}, as_json, f"delivered to {device} via {region}")


@app.command()
def simulate(
    data_dir: DataDirOpt,
    devices: Annotated[int, typer.Option("--devices", min=1, max=100_000, help="How many simulated devices.")] = 100,
    duration: Annotated[float, typer.Option(help="Seconds to run them.")] = 30.0,
    interval: Annotated[float, typer.Option(help="Seconds between a device's telemetry messages.")] = 5.0,
    source_address: Annotated[str, typer.Option(help="Local address to provision from; the fleet must "
                                                     "list it in trusted_proxies to believe the simulated "
                                                     "X-Forwarded-For addresses.")] = "127.0.0.2",
    prefix: Annotated[str | None, typer.Option(help="Device id prefix (default: a fresh one per folder, "
                                                    "kept for reruns).")] = None,
    folder: Annotated[Path | None, typer.Option(help="Where the simulated devices' credentials are kept "
                                                     "(default DATA_DIR/simulated-devices).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Provision simulated devices from addresses around the world and run them against a running
    fleet (``geofleet up``): telemetry at QoS 1 and shadow updates, each device with its own key.
    A rerun on the same folder reuses its devices."""
    from geofleet.device import FailoverOptions
    from geofleet.drill import table
    from geofleet.simulation import Simulation, provision

    simulated = provision(data_dir, devices, folder or data_dir / "simulated-devices", prefix=prefix,
                          source_address=source_address, progress=_progress)
    unlocated = sum(not d.located for d in simulated)
    if unlocated:
        _progress(f"warning: the fleet could not locate {unlocated} of {devices} simulated devices and homed them "
                  f"in its default region: it does not believe X-Forwarded-For from {source_address}. Add "
                  f'"{source_address}/32" to "trusted_proxies" in {data_dir / "fleet.json"} and restart the '
                  "regions (geofleet up), then simulate with a new --folder.")

    async def run() -> dict[str, Any]:
        sim = Simulation(simulated, FailoverOptions(keepalive_s=10, min_stay_s=30), interval_s=interval,
                         shadow_every=5)
        await sim.start()
        await sim.wait_connected(60)
        connected = dict(sim.where())
        await asyncio.sleep(duration)
        await sim.stop_publishing(flush_timeout=30)
        await sim.stop()
        return {"devices": devices, "homes": dict(sim.homes()), "connected": connected,
                "countries": len({d.country for d in simulated if d.located}), "unlocated": unlocated,
                "published": sum(d.sent for d in simulated)}

    summary = asyncio.run(run())
    rows = [("region", "home of", "connected to")]
    rows += [(r, str(n), str(summary["connected"].get(r, 0))) for r, n in sorted(summary["homes"].items())]
    placed = (f"placed from addresses in {summary['countries']} countries" if not unlocated
              else f"{unlocated} of them not located (homed in the default region)")
    _print(summary, as_json, table(rows) + f"\n\n{summary['published']} telemetry messages from {devices} devices "
           f"({placed}), all acknowledged")


@app.command()
def drill(
    kill: Annotated[str, typer.Option("--kill", help="The region to take down.")],
    devices: Annotated[int, typer.Option("--devices", min=1, max=100_000)] = 100,
    blackhole: Annotated[bool, typer.Option("--blackhole", help="SIGSTOP instead of SIGKILL: a silent region.")]
    = False,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Where the drill's own fleet lives "
                                                                     "(default: a temporary directory).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a fleet of its own, run simulated devices, kill (or black-hole) a region: measure how long
    until its devices work elsewhere, restart it, measure the fail-back, check nothing was lost."""
    import tempfile

    from geofleet.drill import drill_new_fleet, summary_table

    with tempfile.TemporaryDirectory(prefix="geofleet-drill-") as scratch:
        root = data_dir or Path(scratch) / "fleet"
        result = asyncio.run(drill_new_fleet(root, kill=kill, devices=devices, mode="blackhole" if blackhole
                                             else "kill", progress=_progress))
    _print(result.to_json(), as_json, "\n" + summary_table(result))
    if result.lost:
        _fail(f"{len(result.lost)} message(s) lost, e.g. {result.lost[:3]}")


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read the {what} {path}: {exc}", 2)


@ca_app.command("registration-code")
def ca_registration_code(data_dir: DataDirOpt, region: RegionOpt, as_json: JsonOpt = False) -> None:
    """The code to sign into a verification certificate's subject CN (the same in every region)."""
    with _client(data_dir, region) as api:
        answer = api.call("GET", "/registrationcode")
    _print(answer, as_json, answer["registrationCode"])


@ca_app.command("register")
def ca_register(
    ca_cert: Annotated[Path, typer.Argument(help="The CA certificate (PEM).")],
    data_dir: DataDirOpt,
    region: RegionOpt,
    verification_cert: Annotated[Path, typer.Option(
        "--verification-cert", help="A certificate signed by the CA whose subject CN is the registration code.")],
    set_active: Annotated[bool, typer.Option("--set-active", help="ACTIVE at once (else INACTIVE).")] = False,
    auto_registration: Annotated[bool, typer.Option(
        "--auto-registration", help="Register its devices on first connect (JITR).")] = False,
    template: Annotated[Path | None, typer.Option(
        "--template", help="registrationConfig JSON: policyName, thingTypeName, attributes, thingNameFrom.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a customer CA (with proof of possession of its key); replicated to every region."""
    config: Any = None
    if template is not None:
        try:
            config = json.loads(_read_text(template, "template"))
        except ValueError as exc:
            _fail(f"the template {template} is not JSON: {exc}", 2)
    body = {"caCertificate": _read_text(ca_cert, "CA certificate"),
            "verificationCertificate": _read_text(verification_cert, "verification certificate"),
            "setAsActive": set_active, "allowAutoRegistration": auto_registration, "registrationConfig": config}
    with _client(data_dir, region) as api:
        answer = api.call("POST", "/cacertificate", json=body)
    _print(answer, as_json, f"registered CA {answer['certificateId']}")


@ca_app.command("list")
def ca_list(data_dir: DataDirOpt, region: RegionOpt, as_json: JsonOpt = False) -> None:
    """List the registered customer CAs."""
    with _client(data_dir, region) as api:
        cas = api.call("GET", "/cacertificates")["certificates"]
    _print(cas, as_json, "\n".join(f"{c['certificateId']}\t{c['status']}" for c in cas) or "(no CA certificates)")


@ca_app.command("describe")
def ca_describe(ca_id: str, data_dir: DataDirOpt, region: RegionOpt, as_json: JsonOpt = False) -> None:
    """Show one customer CA: status, auto-registration, template."""
    with _client(data_dir, region) as api:
        answer = api.call("GET", f"/cacertificate/{ca_id}")
    described = answer["certificateDescription"]
    _print(answer, as_json, f"{ca_id}\t{described['status']}\tauto-registration "
                            f"{described['autoRegistrationStatus']}\t{json.dumps(answer['registrationConfig'])}")


@ca_app.command("update")
def ca_update(
    ca_id: str,
    data_dir: DataDirOpt,
    region: RegionOpt,
    status: Annotated[str | None, typer.Option("--status", help="ACTIVE, INACTIVE or REVOKED (final).")] = None,
    auto_registration: Annotated[str | None, typer.Option("--auto-registration", help="ENABLE or DISABLE.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a CA's status or auto-registration; INACTIVE/REVOKED refuse its devices everywhere."""
    if status is None and auto_registration is None:
        _fail("give --status and/or --auto-registration", 2)
    params = {k: v for k, v in (("newStatus", status), ("newAutoRegistrationStatus", auto_registration)) if v}
    with _client(data_dir, region) as api:
        answer = api.call("PUT", f"/cacertificate/{ca_id}", params=params)
    described = answer["certificateDescription"]
    _print(answer, as_json, f"{ca_id}\t{described['status']}\tauto-registration {described['autoRegistrationStatus']}")


@ca_app.command("delete")
def ca_delete(ca_id: str, data_dir: DataDirOpt, region: RegionOpt) -> None:
    """Delete an INACTIVE CA with no device certificates left."""
    with _client(data_dir, region) as api:
        api.call("DELETE", f"/cacertificate/{ca_id}")
    typer.echo(f"CA {ca_id} deleted")


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        _fail(f"{what} is not valid JSON: {error}", 2)


@rule_app.command("create")
def rule_create(
    name: str,
    data_dir: DataDirOpt,
    region: RegionOpt,
    sql: Annotated[str | None, typer.Option("--sql", help="e.g. SELECT * FROM 'dt/+/telemetry' WHERE temp > 30")]
    = None,
    action: Annotated[list[str] | None, typer.Option("--action", help='JSON, repeatable: {"forward": '
                                                     '{"region": "eu-west-1"}}')] = None,
    error_action: Annotated[str | None, typer.Option("--error-action", help="JSON, as --action.")] = None,
    description: Annotated[str, typer.Option(help="What the rule is for.")] = "",
    disabled: Annotated[bool, typer.Option("--disabled", help="Create it disabled.")] = False,
    file: Annotated[Path | None, typer.Option("--file", help="A TopicRulePayload as JSON, instead of the above.")]
    = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a topic rule (replicated to every region)."""
    if file is not None:
        if sql or action or error_action:
            _fail("give either --file or --sql/--action, not both", 2)
        try:
            payload = _json_arg(file.read_text(), str(file))
        except OSError as error:
            _fail(f"cannot read {file}: {error.strerror}", 2)
    else:
        if not sql or not action:
            _fail("a rule needs --sql and at least one --action (or --file rule.json)", 2)
        payload = {"sql": sql, "actions": [_json_arg(a, "--action") for a in action], "description": description,
                   "ruleDisabled": disabled}
        if error_action:
            payload["errorAction"] = _json_arg(error_action, "--error-action")
    if not isinstance(payload, dict):
        _fail("the rule must be a JSON object (a TopicRulePayload)", 2)
    with _client(data_dir, region) as api:
        rule = api.call("POST", f"/rules/{name}", json=payload)["rule"]
    _print(rule, as_json, f"rule {name} created")


@rule_app.command("list")
def rule_list(data_dir: DataDirOpt, region: RegionOpt, as_json: JsonOpt = False) -> None:
    """List topic rules."""
    with _client(data_dir, region) as api:
        rules = api.call("GET", "/rules")["rules"]
    lines = [f"{r['ruleName']}\t{r['topicPattern']}\t{'disabled' if r['ruleDisabled'] else 'enabled'}" for r in rules]
    _print(rules, as_json, "\n".join(lines) or "(no rules)")


@rule_app.command("get")
def rule_get(name: str, data_dir: DataDirOpt, region: RegionOpt) -> None:
    """Show a topic rule (JSON)."""
    with _client(data_dir, region) as api:
        _print(api.call("GET", f"/rules/{name}")["rule"], True)


@rule_app.command("delete")
def rule_delete(name: str, data_dir: DataDirOpt, region: RegionOpt) -> None:
    """Delete a topic rule everywhere."""
    with _client(data_dir, region) as api:
        api.call("DELETE", f"/rules/{name}")
    typer.echo(f"rule {name} deleted")


@rule_app.command("enable")
def rule_enable(name: str, data_dir: DataDirOpt, region: RegionOpt) -> None:
    """Enable a topic rule."""
    with _client(data_dir, region) as api:
        api.call("POST", f"/rules/{name}/enable")
    typer.echo(f"rule {name} enabled")


@rule_app.command("disable")
def rule_disable(name: str, data_dir: DataDirOpt, region: RegionOpt) -> None:
    """Disable a topic rule: it does nothing until enabled again."""
    with _client(data_dir, region) as api:
        api.call("POST", f"/rules/{name}/disable")
    typer.echo(f"rule {name} disabled")


@rule_app.command("outbox")
def rule_outbox(data_dir: DataDirOpt, region: RegionOpt, as_json: JsonOpt = False,
                dead_letters: Annotated[bool, typer.Option("--dead-letters", help="List the dead letters.")] = False
                ) -> None:
    """What the region's rules still have to deliver (or, with --dead-letters, gave up on)."""
    with _client(data_dir, region) as api:
        if dead_letters:
            letters = api.call("GET", "/rules-outbox/dead-letters")["deadLetters"]
            lines = [f"{d['failedAt']}\t{d['ruleName']}\t{d['errorMessage']}" for d in letters]
            _print(letters, as_json, "\n".join(lines) or "(no dead letters)")
            return
        _print(api.call("GET", "/rules-outbox"), True)


@residency_app.command("audit")
def residency_audit(data_dir: DataDirOpt, as_json: JsonOpt = False) -> None:
    """List every item a region stores although its device's residency scope leaves that region
    out (reads the regions' files read-only; works while the fleet runs). Exit 1 if any."""
    from geofleet.residency_audit import audit_data_dir

    report = audit_data_dir(DataDir(data_dir))
    _print(report.to_json(), as_json, report.text())
    if not report.clean:
        raise typer.Exit(1)


def main() -> None:
    os.umask(0o077)  # whatever a command creates (data dirs, stores, logs) is the operator's alone
    try:
        app()
    except ConfigError as error:
        typer.echo(f"geofleet: {error.message}", err=True)
        sys.exit(2)
    except GeofleetError as error:
        typer.echo(f"geofleet: {error.message}", err=True)
        sys.exit(2 if error.status in (400, 404) else 1)
