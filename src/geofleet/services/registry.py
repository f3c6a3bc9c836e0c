"""The registry of one region: one service per resource kind over one ``Ledger``.

It holds no logic of its own: it builds the services in dependency order so that the node,
provisioning and tests get the same wiring, and each caller uses only the resource kinds it
needs (``registry.things``, ``registry.certificates``...).
"""

from __future__ import annotations

from geofleet.domain.hlc import Clock
from geofleet.domain.policy import DEFAULT_POLICY_NAME
from geofleet.pki.ca import Authority
from geofleet.services.ca_certificates import CaCertificates
from geofleet.services.certificates import Certificates
from geofleet.services.consumers import Consumers
from geofleet.services.enrollment import Enrollments
from geofleet.services.ledger import Ledger
from geofleet.services.policies import Policies
from geofleet.services.principals import ThingPrincipals
from geofleet.services.thing_types import ThingTypes
from geofleet.services.things import Things
from geofleet.store.base import Store


class Registry:
    def __init__(self, store: Store, clock: Clock, region: str, account: str, authority: Authority,
                 global_attributes: tuple[str, ...] = ()) -> None:
        self.ledger = Ledger(store, clock, region, global_attributes)
        self.thing_types = ThingTypes(self.ledger, account)
        self.things = Things(self.ledger, account, self.thing_types)
        self.certificates = Certificates(self.ledger, account, authority)
        self.policies = Policies(self.ledger, account)
        self.principals = ThingPrincipals(self.ledger)
        self.ca_certificates = CaCertificates(self.ledger, account, DEFAULT_POLICY_NAME)
        self.enrollments = Enrollments(self.ledger, self.certificates, self.policies, self.thing_types)
        self.consumers = Consumers(self.ledger)
