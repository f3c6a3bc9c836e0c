"""Where the rules may carry a device's messages: only to regions of its residency scope.

A forwarded message is the device's data resting in another region (its inbox publishes it,
its rules and journal may keep it), so ``forward`` obeys the scope of the device that published
the message (its client id, which is its thing name), at three points:

- evaluation (``actions.Forward.prepare``): a forward to a region outside the scope is an action
  failure, so the rule's errorAction runs with AWS's error payload naming the scope;
- sending (``senders.ForwardSender``): a row queued before the scope changed (``device move``, a
  narrowed ``geofleet:regions``) is not sent but dead-lettered, with the reason;
- receiving (``inbox.ForwardInbox``): a region refuses a message about a device whose scope, as
  it knows it, leaves it out, and the sender dead-letters it (no retry could change that).

The other actions are unaffected: ``republish`` stays in the region the device published in
(which is in its scope), and ``http``, ``sqs`` and ``sns`` leave the fleet for a target the
rule's owner chose.
"""

from __future__ import annotations

from typing import Protocol

from geofleet.domain.residency import Scope, WrongRegion


class Scopes(Protocol):
    """The residency scopes this region knows (``services.residency.Residency``)."""

    def scope(self, device: str) -> Scope: ...


def check_forward(scopes: Scopes, device: str, target: str) -> None:
    """``WrongRegion`` (naming the scope) unless ``device``'s messages may rest in ``target``."""
    scope = scopes.scope(device)
    if not scope.includes(target):
        where = ", ".join(scope.listed())
        raise WrongRegion(f"device {device!r} may keep its data only in {where} (its residency scope): its "
                          f"messages are not forwarded to {target}", scope.listed())


def check_received(scopes: Scopes, device: str, region: str) -> None:
    """``WrongRegion`` unless ``device``'s messages may rest in ``region`` (this one, receiving)."""
    scope = scopes.scope(device)
    if not scope.includes(region):
        where = ", ".join(scope.listed())
        raise WrongRegion(f"device {device!r} may keep its data only in {where} (its residency scope): {region} "
                          "does not take its forwarded messages", scope.listed())
