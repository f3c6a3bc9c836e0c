"""The pure rules behind claim hardening: token buckets and ownership tokens."""

from __future__ import annotations

import pytest

from geofleet.config import FleetConfig
from geofleet.domain import ownership
from geofleet.domain.errors import ConfigError, InvalidRequest, Unauthorized
from geofleet.domain.throttle import RateLimiter, Throttled


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    limiter = RateLimiter(per_minute=6, burst=3)
    for _ in range(3):
        limiter.take("claim", 100.0)
    with pytest.raises(Throttled) as refused:
        limiter.take("claim", 100.0)
    assert refused.value.status == 429
    assert refused.value.code == "Throttling"
    assert refused.value.message.startswith("Rate exceeded")
    assert refused.value.retry_after == pytest.approx(10.0)
    limiter.take("other", 100.0)  # one bucket per key
    limiter.take("claim", 110.0)  # 6 a minute: one more token after 10 s
    with pytest.raises(Throttled):
        limiter.take("claim", 110.0)


def test_a_token_is_checked_against_its_record_group_and_expiry() -> None:
    issued = ownership.issue("c" * 64, "factory", "claim-cert", "", now=1000.0, ttl_s=3600)
    assert ownership.certificate_of(issued.token) == "c" * 64
    assert issued.token.split(".")[1] not in str(issued.record), "only a digest of the secret is stored"
    ownership.verify(issued.token, issued.record, "factory", 4599.0)
    with pytest.raises(Unauthorized, match="expired"):
        ownership.verify(issued.token, issued.record, "factory", 4601.0)
    with pytest.raises(Unauthorized, match="another enrollment group"):
        ownership.verify(issued.token, issued.record, "line-2", 1001.0)
    forged = "c" * 64 + ".guess"
    with pytest.raises(Unauthorized, match="unknown"):
        ownership.verify(forged, issued.record, "factory", 1001.0)
    for malformed in (None, 42, "no-dot", "a.b.c"):
        with pytest.raises(Unauthorized):
            ownership.certificate_of(malformed)


def test_the_common_name_rule() -> None:
    ownership.check_common_name("")
    ownership.check_common_name("serial-0001")
    for bad in ("two words", "a/b", "claim.x", "x" * 129):
        with pytest.raises(InvalidRequest, match="subject CN"):
            ownership.check_common_name(bad)
    ownership.check_thing_matches({"commonName": ""}, "anything")
    ownership.check_thing_matches({"commonName": "serial-1"}, "serial-1")
    with pytest.raises(InvalidRequest, match="serial-1"):
        ownership.check_thing_matches({"commonName": "serial-1"}, "serial-2")


@pytest.mark.parametrize("field", ["claim_token_ttl_s", "claim_requests_per_minute", "claim_max_pending"])
def test_claim_limits_in_the_fleet_config_are_whole_positive_numbers(field: str) -> None:
    base = {"regions": [{"name": "eu-west-1"}]}
    assert getattr(FleetConfig.from_json({**base, field: 7}), field) == 7
    for bad in (0, -1, 1.5, "ten", None):
        with pytest.raises(ConfigError, match=field):
            FleetConfig.from_json({**base, field: bad})
