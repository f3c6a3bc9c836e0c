"""The region's HTTP routes, one ``APIRouter`` per resource; ``region/api.py`` mounts them.

Every module holds one resource's routes and its request bodies, and gets what it serves by
constructor injection (``router(...)``), so a route module never reaches for the node.
"""
