"""`chatplane history` marks a message that has siblings (regenerated answers, edits)."""

from __future__ import annotations

from chatplane.cli.history import message_lines
from chatplane.v1 import resources_pb2


def test_siblings_are_marked_with_their_position() -> None:
    answer = resources_pb2.Message(
        role=resources_pb2.ROLE_ASSISTANT, text="hi", sibling_index=1, sibling_count=3
    )
    assert message_lines(answer)[0].endswith("< 2/3 >")
    alone = resources_pb2.Message(role=resources_pb2.ROLE_USER, text="hi", sibling_count=1)
    assert "<" not in message_lines(alone)[0]
