"""Persistence behind one port (``Store``), with SQLite as the embedded adapter."""

from geofleet.store.base import Change, Store
from geofleet.store.sqlite import SqliteStore

__all__ = ["Change", "SqliteStore", "Store"]
