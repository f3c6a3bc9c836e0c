"""Provisioning: which region a new device lives in, and (next) the API that signs it in once."""
