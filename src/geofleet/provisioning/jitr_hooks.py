"""The validation hooks that decide whether a just-in-time registered certificate becomes a
device: an allow-list, an individual enrollment, an operator's HTTPS webhook, or a Python entry
point (fleet.json's ``"jitr"``, parsed by ``domain.jitr.parse_hook``).

Each gets one JSON request (the registered event plus the certificate's subject CN, serial
number, PEM and the thing name the CA's template gives) and returns a ``Verdict``. A hook that
fails, times out or answers nonsense refuses, with the reason: a certificate is never activated
by accident, and stays PENDING_ACTIVATION for the next attempt.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import ssl
from pathlib import Path
from typing import Any, Protocol

import httpx

from geofleet.domain.errors import GeofleetError
from geofleet.domain.jitr import HookConfig, HookKind, Verdict, allow_list_verdict, parse_verdict
from geofleet.domain.json_types import Json
from geofleet.services.enrollment import Enrollments

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0


class Hook(Protocol):
    async def decide(self, request: Json) -> Verdict: ...


class AllowList:
    def __init__(self, allow: frozenset[str]) -> None:
        self._allow = allow

    async def decide(self, request: Json) -> Verdict:
        return allow_list_verdict(self._allow, str(request["thingName"]), int(str(request["serialNumber"]), 16))


class EnrollmentHook:
    """Allows a certificate whose thing has an individual enrollment that is not revoked (the
    same allow-list ``geofleet enrollment create --individual`` keeps for provisioning)."""

    def __init__(self, enrollments: Enrollments) -> None:
        self._enrollments = enrollments

    async def decide(self, request: Json) -> Verdict:
        name = str(request["thingName"])
        try:
            entry = self._enrollments.get(name, individual=True)
        except GeofleetError:
            return Verdict(False, f"no individual enrollment for device {name!r}")
        if entry.get("revoked"):
            return Verdict(False, f"the individual enrollment of device {name!r} is revoked")
        return Verdict(True, f"device {name!r} has an individual enrollment")


class Webhook:
    """POSTs the request to the operator's HTTPS endpoint; retries network errors and 5xx with
    exponential backoff (a webhook restarting must not leave devices pending); a 4xx or a
    2xx that is not a verdict is a refusal."""

    def __init__(self, url: str, verify: ssl.SSLContext, attempts: int, timeout_s: float,
                 first_backoff_s: float = 0.5) -> None:
        self._url, self._verify = url, verify
        self._attempts, self._timeout_s = attempts, timeout_s
        self._first_backoff_s = first_backoff_s

    async def decide(self, request: Json) -> Verdict:
        backoff = self._first_backoff_s
        last = "no attempt made"
        async with httpx.AsyncClient(verify=self._verify, timeout=self._timeout_s) as http:
            for attempt in range(1, self._attempts + 1):
                try:
                    response = await http.post(self._url, json=request)
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                else:
                    if 200 <= response.status_code < 300:
                        try:
                            answer = response.json()
                        except ValueError:
                            return Verdict(False, f"webhook {self._url} answered {response.status_code} "
                                                  "with a body that is not JSON")
                        return parse_verdict(answer, f"webhook {self._url}")
                    if response.status_code < 500:
                        return Verdict(False, f"webhook {self._url} answered {response.status_code}: "
                                              f"{response.text[:200]}")
                    last = f"HTTP {response.status_code}"
                if attempt < self._attempts:
                    log.info("JITR webhook %s failed (%s), attempt %d of %d: retrying in %.1f s", self._url, last,
                             attempt, self._attempts, backoff)
                    await asyncio.sleep(backoff)  # backoff between attempts at a remote call, not a wait for state
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
        return Verdict(False, f"webhook {self._url} failed {self._attempts} time(s), last: {last}", retry=True)


class PythonHook:
    """Calls the operator's ``module:function`` (sync functions run in a worker thread, so that
    a slow one does not stall the region)."""

    def __init__(self, entry_point: str) -> None:
        self._entry_point = entry_point
        self._function: Any = None

    def _load(self) -> Any:
        if self._function is None:
            module, _, name = self._entry_point.partition(":")
            self._function = getattr(importlib.import_module(module), name)
        return self._function

    async def decide(self, request: Json) -> Verdict:
        source = f"entry point {self._entry_point}"
        try:
            function = self._load()
            if inspect.iscoroutinefunction(function):
                answer = await function(dict(request))
            else:
                answer = await asyncio.to_thread(function, dict(request))
        except Exception as exc:  # the operator's code: whatever it raised is a refusal, logged
            return Verdict(False, f"{source} raised {type(exc).__name__}: {exc}", retry=True)
        return parse_verdict(answer, source)


def build_hook(config: HookConfig | None, data_root: Path, enrollments: Enrollments) -> Hook | None:
    """The hook fleet.json asks for; None when it names none (certificates then wait for an
    operator to activate them, as in AWS without a JITR Lambda)."""
    if config is None:
        return None
    if config.kind is HookKind.ALLOW_LIST:
        return AllowList(config.allow)
    if config.kind is HookKind.ENROLLMENT:
        return EnrollmentHook(enrollments)
    if config.kind is HookKind.WEBHOOK:
        cafile = str(data_root / config.ca_file) if config.ca_file else None
        verify = ssl.create_default_context(cafile=cafile)
        return Webhook(config.url, verify, config.attempts, config.timeout_s)
    return PythonHook(config.entry_point)
