"""Page tokens for the list routes (``nextToken`` / ``nextMarker`` as AWS names them).

A listing is read in key order, a page at a time (a keyset query: keys after the last one
returned), so a page costs the same however far into the list it is and a large registry never
has to be held in memory at once. The token carries that last key; it is opaque to the client
and tamper-safe: it is signed (HMAC-SHA256) with a key derived from a fleet secret and bound to
the listing it came from (things, certificates, one thing's shadows), so a client cannot forge
a position or reuse a token of one listing in another. Any token that does not verify is a
400 InvalidRequest, never a 500 or a silently wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from geofleet.domain.errors import InvalidRequest

MAX_TOKEN_LENGTH = 1024
"""As AWS's marker: no token of ours is longer, so a longer one is refused before any work."""
_MAC_BYTES = 16
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing: its items and the token of the next page (None: this was the last)."""

    items: list[T]
    next_token: str | None


class PageTokens:
    """Signs and checks page tokens; ``secret`` is shared by every region, so a token from one
    region is good in another (they list the same replicated data)."""

    def __init__(self, secret: bytes) -> None:
        self._key = hashlib.sha256(b"geofleet-page-token\n" + secret).digest()

    def encode(self, listing: str, after: str) -> str:
        body = json.dumps({"l": listing, "a": after}, separators=(",", ":")).encode()
        mac = hmac.new(self._key, body, hashlib.sha256).digest()[:_MAC_BYTES]
        return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")

    def decode(self, listing: str, token: str | None) -> str:
        """The key to list after ('' for the first page); InvalidRequest for a bad token."""
        if token is None or token == "":
            return ""
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidRequest(f"nextToken is longer than {MAX_TOKEN_LENGTH} characters: pass back the token "
                                 "a previous page returned, unchanged")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise _bad_token() from None
        mac, body = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        expected = hmac.new(self._key, body, hashlib.sha256).digest()[:_MAC_BYTES]
        if not hmac.compare_digest(mac, expected):
            raise _bad_token()
        fields = json.loads(body)  # signed by us: well-formed
        if not isinstance(fields, dict) or fields.get("l") != listing or not isinstance(fields.get("a"), str):
            raise InvalidRequest("this nextToken belongs to another listing: pass back the token this listing "
                                 "returned")
        after: str = fields["a"]
        return after


def page_of(items: list[T], limit: int, key: Callable[[T], str], listing: str, tokens: PageTokens) -> Page[T]:
    """A page from ``items`` read with ``limit + 1`` (one more than the page, to know whether
    another page follows without a second query); ``key`` gives an item's listing key."""
    if len(items) <= limit:
        return Page(items, None)
    kept = items[:limit]
    return Page(kept, tokens.encode(listing, key(kept[-1])))


def _bad_token() -> InvalidRequest:
    return InvalidRequest("invalid nextToken: pass back the token a previous page returned, unchanged")
