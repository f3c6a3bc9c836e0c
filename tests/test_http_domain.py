"""Pure rules behind the HTTP hardening: the X-Forwarded-For chain, name anchoring, byte-wise
signature comparison and tamper-safe page tokens."""

from __future__ import annotations

import pytest

from geofleet.domain.enrollment import csr_fingerprint, device_key, sign, verify_device
from geofleet.domain.errors import InvalidRequest, Unauthorized
from geofleet.domain.names import check_policy_name, check_shadow_name, check_thing_name, check_type_name
from geofleet.domain.network import client_address, join_forwarded, parse_networks, unmapped
from geofleet.domain.paging import MAX_TOKEN_LENGTH, PageTokens, page_of

PROXIES = parse_networks(["10.0.0.0/8"])
LONDON, VIRGINIA = "81.2.69.142", "8.8.8.8"


# -- X-Forwarded-For --------------------------------------------------------------------------

@pytest.mark.parametrize(("lines", "expected"), [
    ([VIRGINIA, LONDON], LONDON),                            # forged first line, our proxy's own line last
    ([f"{VIRGINIA}, 10.0.0.9", LONDON], LONDON),
    ([LONDON, "10.0.0.7"], LONDON),                          # through another proxy of ours on a line of its own
    (["", LONDON, "  "], LONDON),                            # empty lines carry nothing
    ([], "10.1.2.3"),
])
def test_several_header_lines_are_one_chain(lines: list[str], expected: str) -> None:
    assert client_address("10.1.2.3", join_forwarded(lines), PROXIES) == expected


def test_no_lines_is_no_header() -> None:
    assert join_forwarded([]) is None
    assert join_forwarded(["", " "]) is None
    assert join_forwarded(["a", "b, c"]) == "a, b, c"


@pytest.mark.parametrize(("peer", "header", "expected"), [
    ("::ffff:10.1.2.3", LONDON, LONDON),                      # a mapped peer is still our proxy
    ("10.1.2.3", f"::ffff:{LONDON}", LONDON),                 # a mapped client comes back as IPv4
    ("10.1.2.3", f"{VIRGINIA}, ::ffff:10.0.0.9", VIRGINIA),   # a mapped proxy hop is still ours
    ("::ffff:203.0.113.7", LONDON, "203.0.113.7"),            # not ours, and unwrapped all the same
    ("::ffff:10.1.2.3", None, "10.1.2.3"),
])
def test_ipv4_mapped_addresses_are_unwrapped(peer: str, header: str | None, expected: str) -> None:
    assert client_address(peer, header, PROXIES) == expected


def test_unmapped_leaves_other_text_alone() -> None:
    assert unmapped("2a00:1450:4001:80b::200e") == "2a00:1450:4001:80b::200e"
    assert unmapped("not-an-ip") == "not-an-ip"


# -- names ------------------------------------------------------------------------------------

@pytest.mark.parametrize("check", [check_thing_name, check_shadow_name, check_policy_name, check_type_name])
@pytest.mark.parametrize("name", ["dev\n", "dev\r\n", "\ndev", "dev\nx"])
def test_a_newline_anywhere_in_a_name_is_refused(check: object, name: str) -> None:
    assert callable(check)
    with pytest.raises(InvalidRequest):
        check(name)


@pytest.mark.parametrize("name", ["pólicy", "policy\u00a0", "名前"])
def test_policy_names_are_ascii_as_aws_has_them(name: str) -> None:
    with pytest.raises(InvalidRequest):
        check_policy_name(name)


def test_good_names_still_pass() -> None:
    assert check_thing_name("a:b_c-1") == "a:b_c-1"
    assert check_policy_name("p+=,.@_-1") == "p+=,.@_-1"
    assert check_shadow_name("") == ""


# -- signatures -------------------------------------------------------------------------------

@pytest.mark.parametrize("signature", ["é" * 64, "\u0663" * 64, "", "ß"])
def test_a_non_ascii_or_empty_signature_is_unauthorized(signature: str) -> None:
    key = device_key(b"g" * 32, "dev-1")
    with pytest.raises(Unauthorized, match="signature"):
        verify_device(key, "dev-1", csr_fingerprint("csr"), 1_800_000_000, signature, now=1_800_000_000)


def test_an_upper_case_signature_still_verifies() -> None:
    key = device_key(b"g" * 32, "dev-1")
    good = sign(key, "dev-1", csr_fingerprint("csr"), 1_800_000_000)
    verify_device(key, "dev-1", csr_fingerprint("csr"), 1_800_000_000, good.upper(), now=1_800_000_000)


# -- page tokens ------------------------------------------------------------------------------

TOKENS = PageTokens(b"fleet secret")


def test_a_token_carries_the_position_of_its_listing() -> None:
    assert TOKENS.decode("things", TOKENS.encode("things", "dev-7")) == "dev-7"
    assert TOKENS.decode("things", None) == ""
    assert TOKENS.decode("things", "") == ""


@pytest.mark.parametrize("token", ["garbage", "!!", "A", "é" * 30, "x" * (MAX_TOKEN_LENGTH + 1),
                                   TOKENS.encode("things", "dev-7")[:-1],
                                   PageTokens(b"another secret").encode("things", "dev-7")])
def test_a_forged_or_damaged_token_is_an_invalid_request(token: str) -> None:
    with pytest.raises(InvalidRequest, match="nextToken"):
        TOKENS.decode("things", token)


def test_a_token_of_one_listing_is_refused_by_another() -> None:
    with pytest.raises(InvalidRequest, match="another listing"):
        TOKENS.decode("certificates", TOKENS.encode("things", "dev-7"))


def test_a_page_read_with_one_extra_item_knows_whether_more_follow() -> None:
    last = page_of(["a", "b"], 2, str, "things", TOKENS)
    assert last.items == ["a", "b"]
    assert last.next_token is None
    more = page_of(["a", "b", "c"], 2, str, "things", TOKENS)
    assert more.items == ["a", "b"]
    assert more.next_token is not None
    assert TOKENS.decode("things", more.next_token) == "b"
