"""The in-process validation hooks (allow-list, individual enrollment, Python entry point) on a
real SQLite registry; the webhook is tested end to end in test_jitr_webhook.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from geofleet.domain.hlc import Clock
from geofleet.domain.jitr import HookConfig, HookKind, Verdict
from geofleet.domain.policy import DEFAULT_POLICY_NAME, default_device_policy
from geofleet.pki.ca import create_root
from geofleet.provisioning.jitr_hooks import build_hook
from geofleet.services.registry import Registry
from geofleet.store.sqlite import SqliteStore


def _registry(tmp_path: Path) -> Registry:
    registry = Registry(SqliteStore(str(tmp_path / "store.db")), Clock(), "r1", "000000000000",
                        create_root("hooks", "test CA"))
    if not registry.policies.all():
        registry.policies.create(DEFAULT_POLICY_NAME, json.dumps(default_device_policy()))
    return registry


def _decide(config: HookConfig, request: dict[str, Any], tmp_path: Path) -> Verdict:
    hook = build_hook(config, tmp_path, _registry(tmp_path).enrollments)
    assert hook is not None
    return asyncio.run(hook.decide(request))


def test_no_hook_configured_means_no_hook(tmp_path: Path) -> None:
    assert build_hook(None, tmp_path, _registry(tmp_path).enrollments) is None


def test_the_allow_list_takes_device_ids_and_serials(tmp_path: Path) -> None:
    config = HookConfig(HookKind.ALLOW_LIST, allow=frozenset({"pump-1", "1f"}))
    assert _decide(config, {"thingName": "pump-1", "serialNumber": "aa"}, tmp_path).allow
    assert _decide(config, {"thingName": "pump-2", "serialNumber": "1f"}, tmp_path).allow
    assert not _decide(config, {"thingName": "pump-3", "serialNumber": "20"}, tmp_path).allow


def test_the_enrollment_hook_needs_an_individual_enrollment_not_revoked(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    registry.enrollments.create("pump-1", policy=DEFAULT_POLICY_NAME, individual=True)
    registry.enrollments.create("pump-2", policy=DEFAULT_POLICY_NAME, individual=True)
    registry.enrollments.revoke("pump-2", individual=True)
    hook = build_hook(HookConfig(HookKind.ENROLLMENT), tmp_path, registry.enrollments)
    assert hook is not None
    assert asyncio.run(hook.decide({"thingName": "pump-1"})).allow
    refused = asyncio.run(hook.decide({"thingName": "pump-2"}))
    assert not refused.allow
    assert "revoked" in refused.reason
    assert not asyncio.run(hook.decide({"thingName": "pump-3"})).allow


def test_a_python_entry_point_decides(tmp_path: Path) -> None:
    config = HookConfig(HookKind.PYTHON, entry_point="tests.jitr_hook:decide")
    allowed = _decide(config, {"certificateId": "c", "thingName": "ok-1"}, tmp_path)
    assert allowed.allow
    assert allowed.attributes == {"source": "jitr-test"}
    assert not _decide(config, {"certificateId": "c", "thingName": "other"}, tmp_path).allow


def test_a_failing_entry_point_refuses_with_the_reason(tmp_path: Path) -> None:
    missing = _decide(HookConfig(HookKind.PYTHON, entry_point="tests.no_such_module:decide"), {}, tmp_path)
    assert not missing.allow
    assert "ModuleNotFoundError" in missing.reason
    raising = _decide(HookConfig(HookKind.PYTHON, entry_point="json:loads"), {}, tmp_path)
    assert not raising.allow
    assert "TypeError" in raising.reason
