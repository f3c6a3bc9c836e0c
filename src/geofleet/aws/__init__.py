"""The AWS IoT Core backend: the same control plane (registry, provisioning, JITR, revocation)
driving AWS IoT Core in several AWS regions.

The fleet's records live in a DynamoDB global table (``table``); a projector per region applies
them to that region's IoT registry (``projector``, ``reconciler``); Lambda handlers (``handlers``)
run the shared provisioning flow and JITR. Everything here is an adapter: the rules are in
``domain``, ``services`` and ``provisioning``, shared with the region node.
"""
