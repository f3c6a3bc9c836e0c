"""Active-active replication between the regions of a fleet.

Each region pulls every other region's change log over HTTPS with mutual TLS (peer
certificates only), applies the changes idempotently (records last-writer-wins on (HLC,
region), REVOKED terminal, shadows merged per leaf), and stores its position in the same
transaction. Certificate changes travel on a priority stream of their own; anti-entropy
digests repair whatever the logs missed.
"""
