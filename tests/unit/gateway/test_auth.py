"""Parsing of the authorization metadata."""

from __future__ import annotations

import pytest

from chatplane.common import errors
from chatplane.gateway.auth import parse_api_key


def test_bearer_key_is_split_into_id_and_secret() -> None:
    key_id, secret = parse_api_key((("authorization", "Bearer cp_1234-abcd_s3cr_et"),))
    assert (key_id, secret) == ("1234-abcd", "s3cr_et")


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "cp_a_b"),),
        (("authorization", "Basic cp_a_b"),),
        (("authorization", "Bearer "),),
        (("authorization", "Bearer xx_a_b"),),
        (("authorization", "Bearer cp_a"),),
        (("authorization", "Bearer cp_a!b_c"),),
        (("authorization", "Bearer cp_a_" + "x" * 300),),
        (("authorization", "Bearer cp_a_b"), ("authorization", "Bearer cp_c_d")),
        (("authorization-bin", b"\x00"),),
    ],
)
def test_malformed_credentials_are_unauthenticated(
    metadata: tuple[tuple[str, str | bytes], ...],
) -> None:
    with pytest.raises(errors.Unauthenticated):
        parse_api_key(metadata)
