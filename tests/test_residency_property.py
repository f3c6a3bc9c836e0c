"""Data residency as a property: for random devices, scopes, shadow writes, presence entries,
scope changes, restarts and partitions, no region stores an item outside its device's scope,
and the regions of a scope converge.

Three in-process regions (``tests/residency_stack.py``: the real store on files, ledger, thing and
shadow services, residency, replication's applier and peer view) joined by a simulated network
that pulls change logs through the wire format and runs anti-entropy on per-scope digests. The
oracle is the residency audit itself (``geofleet.residency_audit``), on the three store files.

What "never" can mean in an asynchronous fleet: a scope change is written in one region, and
until another region hears of it, that region may still hold the device's data legitimately
under the scope it knows. So after every step:

- each region, audited alone (by the newest thing *it* holds), stores nothing out of scope: no
  region ever keeps or accepts data its own knowledge forbids;
- the fleet-wide audit (by the newest thing *anywhere*) reports only regions that have not yet
  received that newest thing version.

After every partition heals and logs and anti-entropy have run: the fleet-wide audit is clean,
every region of a device's scope holds the same shadow state and thing body, and every other
region holds the stub of that same body.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from geofleet.domain.presence import Session, entry_key
from geofleet.domain.records import Kind
from geofleet.domain.residency import Scope, stub
from geofleet.residency_audit import audit
from tests.helpers import examples
from tests.residency_stack import Stack, anti_entropy, pull

REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-1")
SCOPES = [Scope.everywhere()] + [Scope.of(c) for n in (1, 2, 3) for c in itertools.combinations(REGIONS, n)]
MAX_ROUNDS = 6
THOROUGH = int(os.environ.get("RESIDENCY_EXAMPLES", "100"))
"""Examples under ``make test`` (a tenth under ``make test-unit``); more for a long hunt."""



@dataclass(frozen=True)
class Step:
    """One thing that happens: ``device``/``region``/``value`` for writes, presence and scope
    changes; ``region`` -> ``other`` for pulls, anti-entropy, cuts and heals; ``region`` restarts."""

    kind: str
    device: int = 0
    region: int = 0
    other: int = 0
    value: int = 0


def _steps() -> st.SearchStrategy[Step]:
    index = st.integers(0, len(REGIONS) - 1)
    device = st.integers(0, 2)
    by_device = st.builds(Step, st.sampled_from(["write", "connect"]), device, index, st.just(0), st.integers(0, 99))
    rescope = st.builds(Step, st.just("rescope"), device, index, st.just(0), st.integers(0, len(SCOPES) - 1))
    network = st.builds(Step, st.sampled_from(["pull", "sync", "cut", "heal"]), st.just(0), index, index
                        ).filter(lambda s: s.region != s.other)
    restart = st.builds(Step, st.just("restart"), st.just(0), index)
    return st.one_of(by_device, rescope, network, network, restart)


class World:
    def __init__(self, root: Path, scopes: list[Scope]) -> None:
        self.root = root
        self.stacks = {name: Stack(root, name) for name in REGIONS}
        self.cut: set[frozenset[str]] = set()
        self.devices = [f"dev-{i}" for i in range(len(scopes))]
        for device, scope in zip(self.devices, scopes, strict=True):
            home = scope.listed()[0] if scope.regions is not None else REGIONS[0]
            self.stacks[home].create(device, scope, "personal")

    def close(self) -> None:
        for stack in self.stacks.values():
            stack.close()

    def linked(self, a: str, b: str) -> bool:
        return frozenset((a, b)) not in self.cut

    async def run(self, step: Step) -> None:
        if step.kind in ("write", "connect", "rescope"):
            device, region = self.devices[step.device % len(self.devices)], REGIONS[step.region]
            stack = self.stacks[region]
            if not stack.holds_thing(device) or not stack.residency.here(device):
                return  # the region's routes refuse it (404 or 421)
            if step.kind == "write":
                await stack.write(device, step.value)
            elif step.kind == "connect":
                session = Session(device, region, f"s{step.value}", stack.clock.now(), True)
                stack.ledger.put(Kind.PRESENCE, entry_key(device, region), session.to_json(), ref=device)
            elif SCOPES[step.value].includes(region):  # a scope change is made in a region of both scopes
                stack.rescope(device, SCOPES[step.value], f"owner{step.value}")
        elif step.kind == "restart":
            name = REGIONS[step.region]
            self.stacks[name].close()
            self.stacks[name] = Stack(self.root, name)
        else:
            a, b = REGIONS[step.region], REGIONS[step.other]
            if step.kind == "cut":
                self.cut.add(frozenset((a, b)))
            elif step.kind == "heal":
                self.cut.discard(frozenset((a, b)))
            elif self.linked(a, b):
                if step.kind == "pull":
                    await pull(self.stacks[a], self.stacks[b])
                else:
                    await anti_entropy(self.stacks[a], self.stacks[b])

    async def settle(self) -> None:
        """Heal everything; pull every log to its head and run anti-entropy both ways until a
        round finds no difference."""
        self.cut.clear()
        for _ in range(MAX_ROUNDS):
            differ = 0
            for a, b in itertools.permutations(REGIONS, 2):
                while not await pull(self.stacks[a], self.stacks[b]):
                    pass
            for a, b in itertools.permutations(REGIONS, 2):
                differ += await anti_entropy(self.stacks[a], self.stacks[b])
            if not differ:
                return
        raise AssertionError(f"anti-entropy still finds differences after {MAX_ROUNDS} rounds")

    # -- the properties -----------------------------------------------------------------------

    def newest_thing(self, device: str) -> tuple[str, str]:
        versions = [(r.hlc.encode(), r.origin) for s in self.stacks.values()
                    if (r := s.store.get(Kind.THING, device)) is not None]
        return max(versions)

    def check_nothing_out_of_scope(self) -> None:
        for name, stack in self.stacks.items():
            alone = audit({name: stack.files})
            assert alone.clean, f"{name} holds what its own records forbid:\n{alone.text()}"
        fleet = audit({name: stack.files for name, stack in self.stacks.items()})
        for violation in fleet.violations:
            held = self.stacks[violation.region].store.get(Kind.THING, violation.device)
            assert held is not None, violation
            assert (held.hlc.encode(), held.origin) < self.newest_thing(violation.device), \
                f"{violation.region} knows the newest scope of {violation.device} and still holds:\n{fleet.text()}"

    def check_converged(self) -> None:
        fleet = audit({name: stack.files for name, stack in self.stacks.items()})
        assert fleet.clean, fleet.text()
        for device in self.devices:
            bodies = {name: stack.thing_body(device) for name, stack in self.stacks.items()}
            scope = Scope.of_thing(next(b for b in bodies.values() if b is not None))
            inside = [name for name in REGIONS if scope.includes(name)]
            full = bodies[inside[0]]
            for name in REGIONS:
                expected = full if scope.includes(name) else stub(full)
                assert bodies[name] == expected, f"{device} in {name}: {bodies[name]} != {expected}"
            states = {name: self.stacks[name].shadow_state(device) for name in inside}
            assert len({repr(s) for s in states.values()}) == 1, f"{device}'s shadows differ in its scope: {states}"
            for name in REGIONS:
                if not scope.includes(name):
                    assert self.stacks[name].shadow_state(device) is None


@settings(max_examples=examples(THOROUGH), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(scopes=[Scope.of(["us-east-1", "ap-southeast-1"])],  # eu-west-1, outside, relayed its stub to us-east-1
         steps=[Step("pull", region=2, other=1), Step("sync", region=1, other=0)])
@example(scopes=[Scope.everywhere()],  # us-east-1 leaves the scope: its change log forgets the shadow write
         steps=[Step("write", region=0, value=1), Step("pull", region=0, other=1),
                Step("rescope", region=1, value=SCOPES.index(Scope.of(["eu-west-1"]))),
                Step("pull", region=1, other=0)])
@given(scopes=st.lists(st.sampled_from(SCOPES), min_size=1, max_size=3),
       steps=st.lists(_steps(), max_size=40))
def test_no_region_stores_out_of_scope_and_every_scope_converges(scopes: list[Scope],
                                                                  steps: list[Step]) -> None:
    async def scenario(world: World) -> None:
        world.check_nothing_out_of_scope()
        for action in steps:
            await world.run(action)
            world.check_nothing_out_of_scope()
        await world.settle()
        world.check_nothing_out_of_scope()
        world.check_converged()

    with tempfile.TemporaryDirectory() as root:
        world = World(Path(root), scopes)
        try:
            asyncio.run(scenario(world))
        finally:
            world.close()
