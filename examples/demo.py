#!/usr/bin/env python3
"""The geofleet demo: one fleet over three regions on this machine, and a region lost and won back.

1. start three regions (each its own OS process: broker, registry, shadows, replication);
2. provision a worldwide fleet: each simulated device makes its key, proves its enrollment and
   is placed in the region nearest the country it calls from;
3. run the devices (telemetry at QoS 1 through the device SDK) and show their homes;
4. SIGKILL one region: its devices fail over to the next region in their list; meanwhile the
   application finds one of them through the presence directory and sends it a command;
5. restart the region: after their minimum stay the devices go home;
6. the summary: homes, failover and fail-back times, and every message accounted for.

Run with ``make demo``; everything happens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from pathlib import Path

from geofleet.app import FleetApp
from geofleet.device import FailoverOptions
from geofleet.drill import drill_new_fleet, summary_table
from geofleet.simulation import SimulatedDevice

START = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - START:6.1f}s] {text}", flush=True)


async def reach_one(app: FleetApp, affected: list[SimulatedDevice]) -> None:
    """The application side while the region is down: locate a device and send it a command."""
    if not affected:
        return
    device = affected[0]
    where = await app.locate(device.device_id)
    say(f"application: {device.device_id} (home {device.home}) is connected to {where.region} now")
    region = await app.send(device.device_id, f"cmd/{device.device_id}/blink", '{"times": 3}')
    while not device.commands:
        await asyncio.sleep(0.01)
    say(f"application: command delivered through {region}; the device got {device.commands[-1].decode()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(".demo"))
    parser.add_argument("--devices", type=int, default=60)
    parser.add_argument("--kill", default="eu-west-1")
    args = parser.parse_args()
    shutil.rmtree(args.data_dir, ignore_errors=True)
    args.data_dir.mkdir(parents=True)
    options = FailoverOptions(keepalive_s=5, min_stay_s=8, failback_interval_s=2)
    result = asyncio.run(drill_new_fleet(args.data_dir / "fleet", kill=args.kill, devices=args.devices,
                                         options=options, progress=say, during=reach_one))
    print("\n" + summary_table(result))
    print(f"\nfleet stopped; its files are in {args.data_dir}")
    if result.lost:
        sys.exit(f"{len(result.lost)} message(s) lost")


if __name__ == "__main__":
    main()
