"""IoT policies and their attachments to certificates: what the gate evaluates for every
connect, publish and subscribe."""

from __future__ import annotations

from functools import partial
from typing import Any

from geofleet.domain.errors import Conflict
from geofleet.domain.names import check_policy_name
from geofleet.domain.policy import Policy, parse_policy
from geofleet.domain.records import Kind, pair_key
from geofleet.domain.registry_rules import arn, check_policy_deletable
from geofleet.services.ledger import Ledger


class Policies:
    def __init__(self, ledger: Ledger, account: str) -> None:
        self._ledger = ledger
        self._arn = partial(arn, ledger.region, account, "policy")

    def create(self, name: str, document: str) -> dict[str, Any]:
        check_policy_name(name)
        parse_policy(name, document)
        if self._ledger.live(Kind.POLICY, name) is not None:
            raise Conflict(f"policy {name!r} already exists; PUT a new version instead")
        return self._put(name, document, 1)

    def replace(self, name: str, document: str) -> dict[str, Any]:
        """Give a policy a new document (AWS's new default version)."""
        body = self._ledger.require(Kind.POLICY, name, "policy").body or {}
        parse_policy(name, document)
        return self._put(name, document, int(body["policyVersionId"]) + 1)

    def _put(self, name: str, document: str, version: int) -> dict[str, Any]:
        body = {"policyName": name, "policyDocument": document, "policyVersionId": str(version)}
        self._ledger.put(Kind.POLICY, name, body)
        return {**body, "policyArn": self._arn(name)}

    def get(self, name: str) -> dict[str, Any]:
        body = self._ledger.require(Kind.POLICY, name, "policy").body or {}
        return {**body, "policyArn": self._arn(name)}

    def all(self) -> list[dict[str, Any]]:
        return [{"policyName": r.key, "policyArn": self._arn(r.key)} for r in self._ledger.records(Kind.POLICY)]

    def delete(self, name: str) -> None:
        record = self._ledger.require(Kind.POLICY, name, "policy")
        check_policy_deletable(name, bool(self._ledger.records(Kind.POLICY_ATTACHMENT, ref=name)))
        self._ledger.delete(record)

    # -- attachments -----------------------------------------------------------------------

    def attach(self, policy: str, cert_id: str) -> None:
        self._ledger.require(Kind.POLICY, policy, "policy")
        self._ledger.require(Kind.CERTIFICATE, cert_id, "certificate")
        if self._ledger.live(Kind.POLICY_ATTACHMENT, pair_key(cert_id, policy)) is None:
            self._ledger.put(Kind.POLICY_ATTACHMENT, pair_key(cert_id, policy),
                             {"policyName": policy, "certificateId": cert_id}, ref=policy)

    def detach(self, policy: str, cert_id: str) -> None:
        record = self._ledger.live(Kind.POLICY_ATTACHMENT, pair_key(cert_id, policy))
        if record is not None:
            self._ledger.delete(record)

    def of(self, cert_id: str) -> list[str]:
        """The names of the policies attached to a certificate."""
        return [r.ref for r in self._ledger.records(Kind.POLICY_ATTACHMENT, prefix=f"{cert_id}|")]

    def targets(self, policy: str) -> list[str]:
        """The certificates a policy is attached to."""
        return [(r.body or {})["certificateId"] for r in self._ledger.records(Kind.POLICY_ATTACHMENT, ref=policy)]

    def effective(self, cert_id: str) -> list[Policy]:
        """The parsed policies that decide what a certificate may do."""
        policies = []
        for name in self.of(cert_id):
            record = self._ledger.live(Kind.POLICY, name)
            if record is not None:
                policies.append(parse_policy(name, (record.body or {})["policyDocument"]))
        return policies
