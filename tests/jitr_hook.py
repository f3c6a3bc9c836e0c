"""The validation hook the JITR tests configure (``"jitr": {"hook": "python", "entryPoint":
"tests.jitr_hook:decide"}``): it runs inside the region processes, allows devices whose thing
name starts with ``ok-`` (and ``gate-`` ones once a flag file exists), and appends each call
to the file named by ``GEOFLEET_TEST_JITR_LOG`` so that the test can see which region ran it."""

from __future__ import annotations

import json
import os
from typing import Any


def decide(request: dict[str, Any]) -> dict[str, Any]:
    path = os.environ.get("GEOFLEET_TEST_JITR_LOG")
    if path:
        with open(path, "a") as log:
            log.write(json.dumps({k: request.get(k) for k in ("certificateId", "caCertificateId", "thingName",
                                                            "region", "validatingRegion")}) + "\n")
    name = str(request.get("thingName", ""))
    if name.startswith("gate-"):  # undecided until the test opens the gate
        if not (path and os.path.exists(path + ".open")):
            raise RuntimeError("the test's gate is closed")
        return {"allow": True}
    if name.startswith("ok-"):
        return {"allow": True, "attributes": {"source": "jitr-test"}}
    return {"allow": False, "reason": "not a device of this test"}
