"""AWS's registry rules as pure functions: attribute limits, deletion conditions and the
finality of REVOKED, without a store."""

from __future__ import annotations

import pytest

from geofleet.domain.errors import Conflict, InvalidRequest
from geofleet.domain.records import CertificateStatus
from geofleet.domain.registry_rules import (
    MAX_ATTRIBUTE_LENGTH,
    MAX_ATTRIBUTES,
    check_attributes,
    check_certificate_deletable,
    check_status_change,
    check_thing_type_deletable,
    merge_attributes,
)


def test_attributes_follow_aws_limits() -> None:
    assert check_attributes({"a.b/c": "x=[1]"}) == {"a.b/c": "x=[1]"}
    with pytest.raises(InvalidRequest, match="attribute name"):
        check_attributes({"": "x"})
    with pytest.raises(InvalidRequest, match="value must be a string"):
        check_attributes({"a": "x" * (MAX_ATTRIBUTE_LENGTH + 1)})
    with pytest.raises(InvalidRequest, match="at most"):
        check_attributes({f"k{n}": "v" for n in range(MAX_ATTRIBUTES + 1)})


def test_an_update_merges_or_replaces_and_removes_without_checking_names() -> None:
    current = {"keep": "1", "bad name": "legacy"}
    assert merge_attributes(current, {"bad name": None, "new": "2"}, merge=True) == {"keep": "1", "new": "2"}
    assert merge_attributes(current, {"new": "2"}, merge=False) == {"new": "2"}


def test_revoked_is_final_and_kept_as_a_record() -> None:
    check_status_change("c", CertificateStatus.REVOKED, CertificateStatus.REVOKED)
    with pytest.raises(Conflict, match="cannot be undone"):
        check_status_change("c", CertificateStatus.REVOKED, CertificateStatus.ACTIVE)
    with pytest.raises(Conflict, match="revocation record"):
        check_certificate_deletable("c", CertificateStatus.REVOKED, attached=False)
    with pytest.raises(Conflict, match="ACTIVE"):
        check_certificate_deletable("c", CertificateStatus.ACTIVE, attached=False)
    with pytest.raises(Conflict, match="detach"):
        check_certificate_deletable("c", CertificateStatus.INACTIVE, attached=True)
    check_certificate_deletable("c", CertificateStatus.INACTIVE, attached=False)


def test_a_thing_type_is_deleted_only_deprecated_and_unused() -> None:
    with pytest.raises(Conflict, match="deprecated"):
        check_thing_type_deletable("t", deprecated=False, users=[])
    with pytest.raises(Conflict, match="still used"):
        check_thing_type_deletable("t", deprecated=True, users=["pump-1"])
    check_thing_type_deletable("t", deprecated=True, users=[])
