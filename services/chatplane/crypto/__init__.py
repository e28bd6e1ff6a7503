"""Encryption at rest with crypto-shredding (docs/security.md "Encryption at rest"): per-user
data keys wrapped by a key-encryption key, and the sealed text envelope."""
