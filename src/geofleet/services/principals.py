"""Thing principals: which certificates are attached to which things (a device connects as
its thing only with an attached certificate)."""

from __future__ import annotations

from geofleet.domain.records import Kind, pair_key
from geofleet.services.ledger import Ledger


class ThingPrincipals:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def attach(self, thing: str, cert_id: str) -> None:
        self._ledger.require(Kind.THING, thing, "thing")
        self._ledger.require(Kind.CERTIFICATE, cert_id, "certificate")
        if self._ledger.live(Kind.THING_PRINCIPAL, pair_key(thing, cert_id)) is None:
            self._ledger.put(Kind.THING_PRINCIPAL, pair_key(thing, cert_id),
                             {"thingName": thing, "certificateId": cert_id}, ref=cert_id)

    def detach(self, thing: str, cert_id: str, *, even_if_absent: bool = False) -> None:
        """``even_if_absent`` writes the tombstone anyway, so that an attachment still on its way
        from another region (older) cannot re-attach the certificate when it arrives."""
        record = self._ledger.live(Kind.THING_PRINCIPAL, pair_key(thing, cert_id))
        if record is not None:
            self._ledger.delete(record)
        elif even_if_absent:
            self._ledger.tombstone(Kind.THING_PRINCIPAL, pair_key(thing, cert_id), cert_id)

    def of_thing(self, thing: str) -> list[str]:
        """The certificates attached to ``thing``."""
        return [(r.body or {})["certificateId"] for r in self._ledger.records(Kind.THING_PRINCIPAL, prefix=f"{thing}|")]

    def things_of(self, cert_id: str) -> list[str]:
        """The things ``cert_id`` is attached to."""
        return [(r.body or {})["thingName"] for r in self._ledger.records(Kind.THING_PRINCIPAL, ref=cert_id)]

    def is_attached(self, thing: str, cert_id: str) -> bool:
        return self._ledger.live(Kind.THING_PRINCIPAL, pair_key(thing, cert_id)) is not None
