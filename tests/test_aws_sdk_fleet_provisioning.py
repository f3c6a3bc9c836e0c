"""AWS's own fleet-provisioning client (AWS IoT Device SDK v2, ``awsiot.iotidentity``, MQTT
3.1.1) against a region, as AWS's fleet-provisioning sample drives it: CreateKeysAndCertificate
(its default) and CreateCertificateFromCsr, then RegisterThing with the enrollment group's name
as the template, then a connect with the new identity."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from awscrt import mqtt
from awsiot import iotidentity, mqtt_connection_builder

from geofleet.client import AdminClient
from geofleet.domain.policy import claim_client_id
from geofleet.pki.ca import key_pem, make_csr, new_key
from tests.conftest import Fleet
from tests.helpers import wait_for

TIMEOUT = 15


def _connect(fleet: Fleet, cert: Path, key: Path, client_id: str) -> mqtt.Connection:
    connection = mqtt_connection_builder.mtls_from_path(
        endpoint="localhost", port=fleet.port("us-east-1"), cert_filepath=str(cert), pri_key_filepath=str(key),
        ca_filepath=str(fleet.data.root_ca), client_id=client_id, clean_session=True, keep_alive_secs=30)
    connection.connect().result(TIMEOUT)
    return connection


class _Answer:
    """The sample's pattern: subscribe to accepted and rejected, wait for whichever comes."""

    def __init__(self) -> None:
        self.value: Any = None
        self.rejected: Any = None
        self.done = threading.Event()

    def accepted(self, response: Any) -> None:
        self.value = response
        self.done.set()

    def refused(self, error: Any) -> None:
        self.rejected = error
        self.done.set()

    def wait(self) -> Any:
        assert self.done.wait(TIMEOUT), "no answer from the region"
        assert self.rejected is None, f"rejected: {self.rejected}"
        return self.value


def _register(identity: iotidentity.IotIdentityClient, template: str, token: str, thing: str) -> Any:
    answer = _Answer()
    subscription = iotidentity.RegisterThingSubscriptionRequest(template_name=template)
    for subscribe, callback in ((identity.subscribe_to_register_thing_accepted, answer.accepted),
                                (identity.subscribe_to_register_thing_rejected, answer.refused)):
        subscribed, _ = subscribe(request=subscription, qos=mqtt.QoS.AT_LEAST_ONCE, callback=callback)
        subscribed.result(TIMEOUT)
    identity.publish_register_thing(iotidentity.RegisterThingRequest(
        template_name=template, certificate_ownership_token=token, parameters={"SerialNumber": thing}),
        mqtt.QoS.AT_LEAST_ONCE).result(TIMEOUT)
    return answer.wait()


@pytest.mark.parametrize("flow", ["create-keys", "from-csr"])
def test_the_aws_sdk_fleet_provisioning_flow_works_unchanged(fleet: Fleet, tmp_path: Path, flow: str) -> None:
    group = f"aws-sdk-{flow}"
    claim_key = new_key()
    with AdminClient(fleet.data, "us-east-1") as api:
        api.call("POST", f"/enrollment-groups/{group}", json={})
        claim = api.call("POST", f"/enrollment-groups/{group}/claim-certificate",
                         json={"certificateSigningRequest": make_csr(claim_key, "claim").decode()})
    (tmp_path / "claim.pem").write_text(claim["certificatePem"])
    (tmp_path / "claim.key").write_bytes(key_pem(claim_key))
    connection = _connect(fleet, tmp_path / "claim.pem", tmp_path / "claim.key",
                          claim_client_id(claim["certificateId"]))
    thing = fleet.new_name("sdk")
    try:
        identity = iotidentity.IotIdentityClient(connection)
        created = _Answer()
        if flow == "create-keys":
            request: Any = iotidentity.CreateKeysAndCertificateSubscriptionRequest()
            pairs = ((identity.subscribe_to_create_keys_and_certificate_accepted, created.accepted),
                     (identity.subscribe_to_create_keys_and_certificate_rejected, created.refused))
        else:
            request = iotidentity.CreateCertificateFromCsrSubscriptionRequest()
            pairs = ((identity.subscribe_to_create_certificate_from_csr_accepted, created.accepted),
                     (identity.subscribe_to_create_certificate_from_csr_rejected, created.refused))
        for subscribe, callback in pairs:
            subscribed, _ = subscribe(request=request, qos=mqtt.QoS.AT_LEAST_ONCE, callback=callback)
            subscribed.result(TIMEOUT)
        device_key = new_key()
        if flow == "create-keys":
            identity.publish_create_keys_and_certificate(iotidentity.CreateKeysAndCertificateRequest(),
                                                         mqtt.QoS.AT_LEAST_ONCE).result(TIMEOUT)
        else:
            identity.publish_create_certificate_from_csr(iotidentity.CreateCertificateFromCsrRequest(
                certificate_signing_request=make_csr(device_key, thing).decode()), mqtt.QoS.AT_LEAST_ONCE
            ).result(TIMEOUT)
        made = created.wait()
        registered = _register(identity, group, made.certificate_ownership_token, thing)
        assert registered.thing_name == thing
        assert registered.device_configuration["homeRegion"]
    finally:
        connection.disconnect().result(TIMEOUT)
    (tmp_path / "device.pem").write_text(made.certificate_pem)
    key_text = made.private_key if flow == "create-keys" else key_pem(device_key).decode()
    (tmp_path / "device.key").write_text(key_text)

    def connects() -> bool:
        try:
            device = _connect(fleet, tmp_path / "device.pem", tmp_path / "device.key", thing)
        except Exception:  # awscrt's own errors (or a timeout) for a refused connect
            return False
        device.disconnect().result(TIMEOUT)
        return True

    wait_for(connects, 20, f"{thing} connecting with its new identity")
