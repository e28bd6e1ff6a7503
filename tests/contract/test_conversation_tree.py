"""Contract tests of the conversation tree (docs/conversation-tree.md) in the ConversationStore
on PostgreSQL: parents recorded by BeginTurn, regenerated answers and edited messages as
siblings, the branch a new answer follows (ancestors only), the active branch and the tree
views with sibling info, switching branches, paging a branch, old messages without parents as
a linear chain, and every refusal with its exact error."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest

from chatplane.common import errors
from chatplane.common.ids import new_id
from chatplane.persistence.store.base import (
    BranchCursor,
    ConversationStore,
    ConversationTreePage,
    ConversationView,
    Message,
    Owner,
    Role,
    TurnRequest,
    TurnReservation,
)
from tests.contract.store_fixtures import (  # noqa: F401 (fixtures are found by name)
    FakeClock,
    MessageFactory,
    clock_fixture,
    make_message_fixture,
    module_database_fixture,
    postgres_dsn_fixture,
    store_fixture,
    store_target_fixture,
)

ALICE = Owner("tenant-a", "alice")
BOB = Owner("tenant-a", "bob")
LEASE = timedelta(seconds=30)
BRANCH_LIMIT = 20


def request(
    owner: Owner = ALICE,
    *,
    conversation_id: str = "",
    regenerate: str = "",
    edit: str = "",
    key: str = "",
) -> TurnRequest:
    return TurnRequest(
        owner=owner,
        conversation_id=conversation_id,
        client_message_id=key,
        user_message_id=new_id(),
        assistant_message_id=new_id(),
        title="A chat",
        lease=LEASE,
        regenerate_message_id=regenerate,
        edit_message_id=edit,
        branch_limit=BRANCH_LIMIT,
    )


class Chat:
    """Runs turns on a store as the Gateway and the Agent do: reserve, then record."""

    def __init__(
        self, store: ConversationStore, make_message: MessageFactory, clock: FakeClock
    ) -> None:
        self.store = store
        self.make_message = make_message
        self.clock = clock
        self.texts: dict[str, str] = {}

    async def turn(
        self,
        text: str,
        conversation_id: str = "",
        *,
        regenerate: str = "",
        edit: str = "",
        owner: Owner = ALICE,
    ) -> TurnReservation:
        reservation = await self.store.begin_turn(
            request(owner, conversation_id=conversation_id, regenerate=regenerate, edit=edit)
        )
        await self.record(reservation, text, owner)
        return reservation

    async def record(self, reservation: TurnReservation, text: str, owner: Owner = ALICE) -> None:
        messages: list[Message] = []
        if not reservation.regenerate:
            self.clock.advance(seconds=1)
            messages.append(
                self.make_message(
                    owner,
                    reservation.conversation_id,
                    message_id=reservation.user_message_id,
                    text=text,
                    parent_message_id=reservation.parent_message_id,
                )
            )
            self.texts[reservation.user_message_id] = text
        self.clock.advance(seconds=1)
        answer = f"answer to {text} #{len(self.texts)}"
        messages.append(
            self.make_message(
                owner,
                reservation.conversation_id,
                message_id=reservation.assistant_message_id,
                role=Role.ASSISTANT,
                text=answer,
                reply_to_message_id=reservation.user_message_id,
                parent_message_id=reservation.user_message_id,
            )
        )
        self.texts[reservation.assistant_message_id] = answer
        await self.store.write_messages(messages)

    async def view(
        self,
        conversation_id: str,
        view: ConversationView = ConversationView.ACTIVE_BRANCH,
        limit: int = 100,
        after: BranchCursor | None = None,
    ) -> ConversationTreePage:
        return await self.store.trees.page(
            ALICE, conversation_id, view=view, limit=limit, after=after
        )


@pytest.fixture(name="chat")
def chat_fixture(store: ConversationStore, make_message: MessageFactory, clock: FakeClock) -> Chat:
    return Chat(store, make_message, clock)


def ids(page: ConversationTreePage) -> list[str]:
    return [placed.message.message_id for placed in page.messages]


def turn_ids(*reservations: TurnReservation) -> list[str]:
    found: list[str] = []
    for reservation in reservations:
        if not reservation.regenerate:
            found.append(reservation.user_message_id)
        found.append(reservation.assistant_message_id)
    return found


def branch_ids(reservation: TurnReservation) -> Sequence[tuple[str, str | None]]:
    assert reservation.branch is not None
    return [(m.message_id, m.text) for m in reservation.branch]


async def test_turns_chain_through_parents_and_the_active_leaf(chat: Chat) -> None:
    first = await chat.turn("one")
    assert first.parent_message_id == "" and first.branch is None
    second = await chat.turn("two", first.conversation_id)
    # A linear conversation: the Agent answers from recent messages, no branch is read.
    assert second.parent_message_id == first.assistant_message_id
    assert second.branch is None and not second.regenerate
    page = await chat.view(first.conversation_id)
    assert ids(page) == turn_ids(first, second)
    assert [p.parent_message_id for p in page.messages] == [
        "",
        first.user_message_id,
        first.assistant_message_id,
        second.user_message_id,
    ]
    assert all(p.sibling_ids == (p.message.message_id,) for p in page.messages)
    assert page.conversation.active_message_id == second.assistant_message_id
    assert page.messages[2].message.parent_message_id == first.assistant_message_id


async def test_a_turn_after_a_handoff_follows_the_question_and_the_replies(
    chat: Chat, make_message: MessageFactory
) -> None:
    """With a person (docs/handoff.md) the Gateway stores a turn's question only and ends its
    lease; operators' replies follow. The next bot turn continues below the last reply, so
    the active branch keeps the exchange with the person."""
    first = await chat.turn("one")
    conversation_id = first.conversation_id
    handed = await chat.store.begin_turn(request(conversation_id=conversation_id))
    chat.clock.advance(seconds=1)
    question = make_message(ALICE, conversation_id, message_id=handed.user_message_id)
    await chat.store.write_messages([question])
    await chat.store.release_turn(ALICE, handed.user_message_id)
    chat.clock.advance(seconds=1)
    reply = make_message(
        ALICE, conversation_id, role=Role.ASSISTANT, text="a person", operator_id="ana"
    )
    await chat.store.write_messages([reply])
    after = await chat.turn("two", conversation_id)
    assert after.parent_message_id == reply.message_id
    page = await chat.view(conversation_id)
    assert ids(page) == [
        *turn_ids(first),
        question.message_id,
        reply.message_id,
        *turn_ids(after),
    ]


async def test_regenerate_twice_makes_three_sibling_answers(chat: Chat) -> None:
    first = await chat.turn("tell me a joke")
    question = first.user_message_id
    again = await chat.turn("", regenerate=question)
    assert (again.user_message_id, again.regenerate, again.user_text) == (
        question,
        True,
        "tell me a joke",
    )
    assert again.conversation_id == first.conversation_id
    assert again.parent_message_id == "" and branch_ids(again) == []
    third = await chat.turn("", first.conversation_id, regenerate=question)
    answers = [
        first.assistant_message_id,
        again.assistant_message_id,
        third.assistant_message_id,
    ]
    page = await chat.view(first.conversation_id)
    # The active branch shows the newest answer only.
    assert ids(page) == [question, third.assistant_message_id]
    assert page.messages[1].sibling_ids == tuple(answers)
    tree = await chat.view(first.conversation_id, ConversationView.TREE)
    assert ids(tree) == [question, *answers]
    assert {p.parent_message_id for p in tree.messages[1:]} == {question}
    assert [p.sibling_ids.index(p.message.message_id) for p in tree.messages[1:]] == [0, 1, 2]
    # The regenerated answers' turns are found by their answer, with the stored question.
    turn = await chat.store.get_turn(ALICE, question, assistant_message_id=answers[1])
    assert turn.user_message is not None and turn.user_message.message_id == question
    assert turn.assistant_message is not None
    assert turn.assistant_message.message_id == answers[1]
    assert not await chat.store.release_turn(ALICE, question, assistant_message_id=answers[1])


async def test_edit_of_a_middle_message_branches_with_ancestors_only(chat: Chat) -> None:
    first = await chat.turn("I live in Lisbon")
    conversation = first.conversation_id
    second = await chat.turn("I like red", conversation)
    third = await chat.turn("what do I like?", conversation)
    edited = await chat.store.begin_turn(
        request(conversation_id=conversation, edit=third.user_message_id)
    )
    await chat.record(edited, "what do I like, again?")
    # The edit's user message follows the edited one's parent; the model sees the ancestors.
    assert edited.parent_message_id == second.assistant_message_id
    assert not edited.regenerate and edited.user_message_id != third.user_message_id
    assert branch_ids(edited) == [(i, chat.texts[i]) for i in turn_ids(first, second)]
    branch_edit = await chat.store.begin_turn(
        request(conversation_id=conversation, edit=second.user_message_id)
    )
    await chat.record(branch_edit, "I like blue")
    assert branch_edit.parent_message_id == first.assistant_message_id
    assert branch_ids(branch_edit) == [(i, chat.texts[i]) for i in turn_ids(first)]
    page = await chat.view(conversation)
    assert ids(page) == turn_ids(first, branch_edit)
    assert page.messages[2].sibling_ids == (second.user_message_id, branch_edit.user_message_id)
    # A turn continuing the active branch sees only that branch (the red branch is a sibling).
    follow = await chat.turn("and my city?", conversation)
    assert follow.parent_message_id == branch_edit.assistant_message_id
    assert branch_ids(follow) == [(i, chat.texts[i]) for i in turn_ids(first, branch_edit)]
    tree = await chat.view(conversation, ConversationView.TREE)
    assert len(tree.messages) == 12
    # Back to the first branch through its user message: it ends at its newest descendant.
    switched = await chat.store.trees.set_active_branch(ALICE, conversation, second.user_message_id)
    assert switched.active_message_id == edited.assistant_message_id
    page = await chat.view(conversation)
    assert ids(page) == [
        *turn_ids(first, second),
        edited.user_message_id,
        edited.assistant_message_id,
    ]
    assert page.messages[4].sibling_ids == (third.user_message_id, edited.user_message_id)
    later = await chat.turn("continue here", conversation)
    assert later.parent_message_id == edited.assistant_message_id


async def test_a_branch_pages_through_the_branch_it_started_on(chat: Chat) -> None:
    first = await chat.turn("a")
    conversation = first.conversation_id
    second = await chat.turn("b", conversation)
    page = await chat.view(conversation, limit=3)
    assert ids(page) == turn_ids(first, second)[:3]
    assert isinstance(page.next_cursor, BranchCursor)
    # The active branch changes between pages; the next page follows the first one's branch.
    await chat.turn("", conversation, regenerate=second.user_message_id)
    rest = await chat.view(conversation, limit=3, after=page.next_cursor)
    assert ids(rest) == [second.assistant_message_id]
    assert rest.next_cursor is None


async def test_refusals_name_the_problem(chat: Chat, clock: FakeClock) -> None:
    first = await chat.turn("hello")
    conversation = first.conversation_id
    with pytest.raises(errors.InvalidArgument) as wrong_kind:
        await chat.store.begin_turn(request(regenerate=first.assistant_message_id))
    assert wrong_kind.value.field == "regenerate_message_id"
    with pytest.raises(errors.InvalidArgument) as wrong_edit:
        await chat.store.begin_turn(request(edit=first.assistant_message_id))
    assert wrong_edit.value.field == "edit_message_id"
    for target in (new_id(), "not-an-id"):
        with pytest.raises(errors.NotFound):
            await chat.store.begin_turn(request(regenerate=target))
    with pytest.raises(errors.NotFound):  # someone else's message
        await chat.store.begin_turn(request(BOB, regenerate=first.user_message_id))
    other = await chat.turn("elsewhere")
    with pytest.raises(errors.NotFound):  # a message of another conversation
        await chat.store.begin_turn(
            request(conversation_id=other.conversation_id, edit=first.user_message_id)
        )
    with pytest.raises(errors.InvalidArgument):
        await chat.store.begin_turn(
            request(regenerate=first.user_message_id, edit=first.user_message_id)
        )
    # A message whose turn is still running: not yet; once its lease ran out unstored: gone.
    running = await chat.store.begin_turn(request(conversation_id=conversation))
    with pytest.raises(errors.FailedPrecondition):
        await chat.store.begin_turn(request(regenerate=running.user_message_id))
    clock.advance(seconds=LEASE.total_seconds() + 1)
    with pytest.raises(errors.NotFound):
        await chat.store.begin_turn(request(edit=running.user_message_id))
    with pytest.raises(errors.NotFound):
        await chat.store.trees.set_active_branch(ALICE, conversation, new_id())
    with pytest.raises(errors.NotFound):
        await chat.store.trees.set_active_branch(BOB, conversation, first.user_message_id)
    with pytest.raises(errors.NotFound):
        await chat.store.trees.page(
            BOB, conversation, view=ConversationView.ACTIVE_BRANCH, limit=10
        )
    # The failed turn left no trace in the tree: the next turn follows the stored answer.
    nxt = await chat.turn("next", conversation)
    assert nxt.parent_message_id == first.assistant_message_id


async def test_pending_turns_are_on_the_branch_without_text(chat: Chat) -> None:
    first = await chat.turn("first")
    conversation = first.conversation_id
    await chat.turn("", conversation, regenerate=first.user_message_id)
    # A turn that has not been stored yet (its answer just finished, or is still streaming).
    pending = await chat.store.begin_turn(request(conversation_id=conversation))
    follow = await chat.store.begin_turn(request(conversation_id=conversation))
    assert follow.parent_message_id == pending.assistant_message_id
    branch = branch_ids(follow)
    assert branch[-2:] == [(pending.user_message_id, None), (pending.assistant_message_id, None)]
    assert branch[0] == (first.user_message_id, "first")
    # Until it is stored, the active branch ends at the stored message above it.
    page = await chat.view(conversation)
    assert ids(page)[0] == first.user_message_id and len(ids(page)) == 2


async def test_regenerate_keeps_its_idempotency_key(chat: Chat) -> None:
    first = await chat.turn("hi")
    again = request(regenerate=first.user_message_id, key="regen-1")
    reserved = await chat.store.begin_turn(again)
    repeated = await chat.store.begin_turn(request(regenerate=first.user_message_id, key="regen-1"))
    assert not repeated.acquired
    assert (repeated.user_message_id, repeated.assistant_message_id) == (
        first.user_message_id,
        reserved.assistant_message_id,
    )
    assert await chat.store.release_turn(
        ALICE, first.user_message_id, assistant_message_id=reserved.assistant_message_id
    )
    taken = await chat.store.begin_turn(request(regenerate=first.user_message_id, key="regen-1"))
    assert taken.acquired and taken.regenerate and taken.user_text == "hi"
    assert taken.assistant_message_id == reserved.assistant_message_id


async def test_messages_without_parents_form_a_linear_chain(
    chat: Chat, make_message: MessageFactory, clock: FakeClock
) -> None:
    conversation = new_id()
    old: list[Message] = []
    for index in range(4):
        clock.advance(seconds=1)
        role = Role.USER if index % 2 == 0 else Role.ASSISTANT
        old.append(
            make_message(
                ALICE,
                conversation,
                role=role,
                text=f"old {index}",
                reply_to_message_id=old[-1].message_id if role is Role.ASSISTANT else "",
            )
        )
    await chat.store.write_messages(old)
    page = await chat.view(conversation)
    assert ids(page) == [m.message_id for m in old]
    assert [p.parent_message_id for p in page.messages] == ["", *[m.message_id for m in old[:3]]]
    assert page.conversation.active_message_id == old[-1].message_id
    nxt = await chat.turn("new", conversation)
    assert nxt.parent_message_id == old[-1].message_id
    edited = await chat.turn("old 2, edited", conversation, edit=old[2].message_id)
    assert edited.parent_message_id == old[1].message_id
    assert branch_ids(edited) == [(m.message_id, m.text) for m in old[:2]]
