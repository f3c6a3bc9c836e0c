"""The region node's shell: the broker gate, the HTTP routes, health, the concierge and the wiring
of one region (its use cases live in ``geofleet.services``)."""
