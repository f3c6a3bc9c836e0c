"""geofleet: run an IoT fleet across several regions as one fleet.

A *region node* is a self-hosted region that speaks the AWS IoT device protocol (MQTT over
mutual TLS, device shadows, lifecycle events). See ``docs/architecture.md`` for the map.
"""

__version__ = "0.1.0"
