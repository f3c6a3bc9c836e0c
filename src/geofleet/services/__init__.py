"""The control plane's use cases: the registry (one module per resource kind), shadows,
presence and the provision-once guard.

They stand between the pure ``domain`` and what drives them (replication, provisioning and the
region node's shell), and reach storage only through the ``Store`` port, so that another
backend (AWS IoT Core) can drive the same rules against another registry.
"""
