"""What every admin route shares: the admin-token guard and the signed paging tokens.

Both derive from the fleet's admin token, so they are built once by the node and handed to
each router: a route is guarded by listing ``access.guard`` as its (or its router's)
dependencies, not by code of its own.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, params

from geofleet.domain.errors import Unauthorized
from geofleet.domain.json_types import Json
from geofleet.domain.paging import PageTokens

UNSIZED_PAGE = 10_000
"""The page a listing without a page size gets: bounded (no answer holds a whole large registry)
yet large enough that callers written before paging still see every item of a small fleet."""


class AdminAccess:
    """The fleet admin token's two uses on the HTTP API."""

    def __init__(self, token: str) -> None:
        def authenticated(authorization: Annotated[str | None, Header()] = None) -> None:
            scheme, _, given = (authorization or "").partition(" ")
            # Bytes: compare_digest refuses a str with non-ASCII characters (TypeError, a 500).
            if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), token.encode()):
                raise Unauthorized("send the fleet's admin token as 'Authorization: Bearer <token>'")

        self.guard: list[params.Depends] = [Depends(authenticated)]
        """Dependencies that make a route need ``Authorization: Bearer <admin token>``."""
        self.pages = PageTokens(token.encode())
        """Signs and checks listing continuation tokens (a client cannot forge a position)."""


def next_field(field: str, token: str | None) -> Json:
    """The next-page field, present only while more pages follow (AWS omits it at the end)."""
    return {} if token is None else {field: token}
