"""The fleet's public key infrastructure.

One fleet root CA; one intermediate CA per region whose key stays in that region; device
certificates signed from CSRs only (device keys are made on the device). Every region trusts
the root, so a device certificate from any region works in every region.
"""
