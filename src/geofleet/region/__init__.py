"""The region node: broker, store, registry, shadows, events and the HTTP API, wired together."""
