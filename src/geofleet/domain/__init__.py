"""Pure logic with no I/O: models, clocks, policies, shadows, topic names.

Everything here is reused by every backend (the self-hosted region node today, AWS IoT Core
later), so nothing in this package may import sockets, files, databases or other geofleet
packages.
"""
