"""Path and query parameters that name devices and shadows, checked once where they enter.

A route declares ``thing: Thing`` (or ``device: Device``) and receives a ``ThingName``: the name
passed AWS's rules before the route body runs, so the services below trust it instead of each
checking it again. A bad name is a 400 with the rule it broke, as any ``InvalidRequest``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query

from geofleet.domain.names import CLASSIC, ShadowName, ThingName, check_shadow_name, check_thing_name


def _thing(thing: str) -> ThingName:
    return check_thing_name(thing)


def _device(device: str) -> ThingName:
    return check_thing_name(device)


def _shadow(name: Annotated[str, Query(description="Named shadow; empty for the classic shadow.")] = CLASSIC
            ) -> ShadowName:
    return check_shadow_name(name)


Thing = Annotated[ThingName, Depends(_thing)]
"""The ``{thing}`` path parameter, checked."""

Device = Annotated[ThingName, Depends(_device)]
"""The ``{device}`` path parameter, checked."""

Shadow = Annotated[ShadowName, Depends(_shadow)]
"""The ``?name=`` query parameter of the shadow routes, checked (absent: the classic shadow)."""
