"""Sticky assignment: a user's point in [0, 1) comes from a stable hash of (salt, tenant, user),
so every Agent replica and every restart puts the user in the same variant for as long as
the variants and their weights stay the same. Python's hash() is salted per process, so
BLAKE2b is used."""

from __future__ import annotations

import hashlib

from chatplane.agent.variants.experiment import Experiment, Variant

_SEPARATOR = b"\x1f"  # cannot occur in what the Gateway accepts as ids of tenants and users
_SCALE = float(1 << 64)


def bucket_point(salt: str, tenant_id: str, user_id: str) -> float:
    """The user's place in [0, 1), uniform over users and the same on every machine."""
    key = _SEPARATOR.join(part.encode("utf-8") for part in (salt, tenant_id, user_id))
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def assign(experiment: Experiment, tenant_id: str, user_id: str) -> Variant:
    """The variant of this user: [0, 1) is cut into consecutive spans in proportion to the
    weights, in the experiment's order, and the user's point falls into one of them."""
    point = bucket_point(experiment.salt, tenant_id, user_id)
    total = sum(variant.weight for variant in experiment.variants)
    edge = 0.0
    for variant in experiment.variants:
        edge += variant.weight / total
        if point < edge:
            return variant
    return experiment.variants[-1]  # rounding: the point sits just below 1.0
