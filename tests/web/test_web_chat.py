"""The reference web chat end to end: headless Chromium opens the page through Envoy (the edge)
against the real services, and everything the page shows is checked against what the Gateway
stored. Screenshots of each step are saved in the test's output folder."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import psycopg
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from chatplane.launcher import Stack
from chatplane.v1 import gateway_pb2, gateway_pb2_grpc, resources_pb2
from tests.integration.stack_client import (
    create_key,
    poll,
    running_stack,
    store_dsn,
    unique,
    wait_until_indexed,
)
from tests.unit.memory.pdf_fixture import make_pdf
from tests.web.browser import REPO, Browser, browser_available, open_browser

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Answers at 12 words a second (about 6 s each): slow enough to watch, stop and cut them.
STACK_ENV = {
    "CHATPLANE_OFFLINE_TOKENS_PER_SECOND": "12",
    "CHATPLANE_OFFLINE_FIRST_TOKEN_SECONDS": "0.05",
    # A burst for every test's own user, refilled slowly, so a 429 names a long retry time.
    "CHATPLANE_RATE_LIMIT_PER_MINUTE": "3",
    "CHATPLANE_RATE_LIMIT_BURST": "40",
}
ANSWER = "[data-testid=answer]"
# The last one matching is the newest (the browser driver acts on the last match).
LAST_ANSWER = "[data-testid=turn] [data-testid=answer]"


@pytest.fixture(scope="module")
def out_dir() -> Path:
    """Screenshots and the driver's log: test-output/web/<test>/ (kept after the run)."""
    path = REPO / "test-output" / "web"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    missing = browser_available()
    if missing is not None:
        pytest.fail(f"the browser test cannot run: {missing}", pytrace=False)
    if not (REPO / "web" / "dist" / "index.html").is_file():
        pytest.fail("web/dist is not built: run `make web`", pytrace=False)
    data_dir = tmp_path_factory.mktemp("web-stack")
    async with running_stack(data_dir, STACK_ENV, edge=True, web=True) as running:
        yield running


@pytest.fixture(scope="module")
def page_url(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.services['edge'].port}/"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gateway(stack: Stack) -> AsyncIterator[gateway_pb2_grpc.GatewayServiceStub]:
    """Direct gRPC to the Gateway, to check what the page shows against what is stored."""
    async with grpc.aio.insecure_channel(stack.info().address("gateway")) as channel:
        yield gateway_pb2_grpc.GatewayServiceStub(channel)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def chromium(out_dir: Path) -> AsyncIterator[Browser]:
    """One headless Chromium (fresh profile) for the module's tests."""
    async with open_browser(out_dir) as opened:
        yield opened


@pytest_asyncio.fixture(loop_scope="module")
async def browser(
    chromium: Browser, page_url: str, out_dir: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Browser]:
    """The browser signed out (nothing stored for the page); screenshots in the test's folder."""
    await chromium.goto(page_url)
    await chromium.evaluate("() => sessionStorage.clear()")
    await chromium.goto("about:blank")
    await chromium.console()
    chromium.out_dir = out_dir / request.node.name
    chromium.out_dir.mkdir(exist_ok=True)
    yield chromium


def _words(text: str) -> str:
    """Letters and digits only: markdown's rendering drops list dashes, quotes, newlines."""
    return re.sub(r"[^0-9A-Za-z]+", "", text)


def _auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def _sign_in(browser: Browser, url: str, key: str) -> None:
    await browser.goto(url)
    await browser.fill("[data-testid=api-key]", key)
    await browser.click("[data-testid=sign-in-button]")
    await browser.wait_for("[data-testid=chat]")


async def _send(browser: Browser, text: str) -> None:
    before = await browser.count("[data-testid=turn]")
    await browser.fill("[data-testid=composer]", text)
    await browser.click("[data-testid=send]")
    await browser.wait_until(
        "(n) => document.querySelectorAll('[data-testid=turn]').length > n", before
    )


async def _answer_state(browser: Browser) -> dict[str, str]:
    state: dict[str, str] = await browser.evaluate(
        """(selector) => {
            const el = [...document.querySelectorAll(selector)].pop();
            const text = el?.querySelector('[data-testid=answer-text]')?.innerText ?? '';
            return { state: el?.dataset.state ?? '', length: text.length, text };
        }""",
        LAST_ANSWER,
    )
    return state


async def _wait_answer_state(browser: Browser, states: set[str], timeout: float = 30) -> None:
    await browser.wait_until(
        """([selector, states]) => {
            const el = [...document.querySelectorAll(selector)].pop();
            return el && states.includes(el.dataset.state);
        }""",
        [LAST_ANSWER, sorted(states)],
        timeout=timeout,
    )


async def _watch_growth(browser: Browser, observations: int) -> list[int]:
    """The answer's rendered length at each change, until `observations` while streaming."""
    lengths: list[int] = []
    while len(lengths) < observations:
        seen = await browser.wait_until(
            """([selector, previous]) => {
                const el = [...document.querySelectorAll(selector)].pop();
                const text = el?.querySelector('[data-testid=answer-text]')?.innerText ?? '';
                if (el?.dataset.state !== 'streaming' && el?.dataset.state !== 'sending') {
                    return { state: el?.dataset.state ?? '', length: text.length };
                }
                return text.length > previous ? { state: 'streaming', length: text.length } : false;
            }""",
            [LAST_ANSWER, lengths[-1] if lengths else 0],
        )
        assert seen["state"] == "streaming", f"the answer ended after {lengths} ({seen})"
        lengths.append(seen["length"])
    return lengths


async def _stored_turn(
    gateway: gateway_pb2_grpc.GatewayServiceStub, key: str, conversation_id: str, answer_id: str
) -> resources_pb2.Message:
    async def stored() -> resources_pb2.Message | None:
        response = await gateway.GetConversation(
            gateway_pb2.GetConversationRequest(conversation_id=conversation_id),
            metadata=_auth(key),
        )
        return next((m for m in response.messages if m.message_id == answer_id), None)

    message: resources_pb2.Message = await poll(stored)
    return message


def _event_counts(events: str | None) -> dict[str, int]:
    """The page's `data-events` (events received, by kind)."""
    assert events is not None
    return {k: int(v) for k, v in re.findall(r'"(\w+)":(\d+)', events)}


def _scrape_model_calls(url: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as response:  # loopback only
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "chatplane_llm_attempt_duration_seconds_count"
    )


async def _model_calls(stack: Stack) -> float:
    """How many times the Agent has called its model (every outcome), from its /metrics."""
    url = stack.info().metrics_url("agent")
    assert url, "the Agent serves no /metrics"
    return await asyncio.to_thread(_scrape_model_calls, url)


def _feedback_rows(stack: Stack, message_id: str) -> list[tuple[str, str]]:
    with psycopg.connect(store_dsn(Path(stack.data_dir))) as connection:
        return connection.execute(
            "SELECT message_id, rating FROM feedback WHERE message_id = %s", (message_id,)
        ).fetchall()


async def _assert_no_page_errors(browser: Browser, allowed: str = "") -> None:
    problems = [
        m
        for m in await browser.console()
        if m["type"] in ("error", "pageerror") and not (allowed and re.search(allowed, m["text"]))
    ]
    assert not problems, problems


async def test_sign_in_stream_citations_feedback_stop_and_history(
    stack: Stack, page_url: str, gateway: gateway_pb2_grpc.GatewayServiceStub, browser: Browser
) -> None:
    tenant, user = unique("tenant"), unique("user")
    key = await create_key(stack, tenant, user)
    assert await browser.goto(page_url) == 200
    await browser.wait_for("[data-testid=sign-in]")
    await browser.screenshot("01-sign-in")
    await _sign_in(browser, page_url, key)
    # The key lives in this tab's sessionStorage only.
    storage = await browser.evaluate(
        "() => [sessionStorage.getItem('chatplane.apiKey'), localStorage.length, document.cookie]"
    )
    assert storage == [key, 0, ""]

    # A first answer, watched token by token.
    await _send(browser, "My locker code is 4711. Please remember it.")
    lengths = await _watch_growth(browser, observations=4)
    assert lengths == sorted(set(lengths)), lengths
    await browser.screenshot("02-streaming")
    await _wait_answer_state(browser, {"done"})
    await browser.screenshot("03-done")

    answer = LAST_ANSWER
    events = await browser.attribute(answer, "data-events")
    assert events is not None
    counts = {k: int(v) for k, v in re.findall(r'"(\w+)":(\d+)', events)}
    delta_count = int(await browser.attribute(answer, "data-delta-count") or 0)
    assert counts["started"] == counts["usage"] == counts["done"] == 1
    assert counts["delta"] == delta_count > 10
    assert int(await browser.attribute(answer, "data-last-sequence") or 0) == delta_count
    answer_id = await browser.attribute(answer, "data-message-id")
    conversation_id = await browser.attribute("[data-testid=chat]", "data-conversation-id")
    assert answer_id and conversation_id
    stored = await _stored_turn(gateway, key, conversation_id, answer_id)
    page = await _answer_state(browser)
    assert _words(page["text"]) == _words(stored.text)
    assert stored.status == resources_pb2.MESSAGE_STATUS_COMPLETE
    # The markdown list of the offline answer is rendered as HTML, not shown as raw text.
    assert await browser.count(f"{answer} [data-testid=answer-text] p") >= 2

    # Thumbs up: stored (the Persistence store's feedback table).
    await browser.click(f"{answer} [data-testid=thumbs-up]")
    await browser.wait_for(f"{answer} [data-testid=feedback][data-status=saved]")
    assert _feedback_rows(stack, answer_id) == [(answer_id, "thumbs_up")]
    # Changing the rating replaces it.
    await browser.click(f"{answer} [data-testid=thumbs-down]")
    await browser.wait_until(
        "(s) => document.querySelector(s)?.dataset.rating === 'down' "
        "&& document.querySelector(s)?.dataset.status === 'saved'",
        f"{LAST_ANSWER} [data-testid=feedback]",
    )
    assert _feedback_rows(stack, answer_id) == [(answer_id, "thumbs_down")]

    # In a new chat, a question recalls the first conversation: its citations are shown
    # (once Memory has indexed it from the message log, shortly after `done`).
    await wait_until_indexed(stack, tenant, user, "What is my locker code?", answer_id)
    await browser.click("[data-testid=new-chat]")
    await browser.wait_until("() => document.querySelectorAll('[data-testid=answer]').length === 0")
    await _send(browser, "What is my locker code?")
    await _wait_answer_state(browser, {"done"})
    citations = int(await browser.attribute(LAST_ANSWER, "data-citation-count") or 0)
    events = await browser.attribute(LAST_ANSWER, "data-events") or ""
    assert citations > 0
    assert f'"citation":{citations}' in events
    await browser.click(f"{LAST_ANSWER} [data-testid=citations] summary")
    cited = await browser.call("texts", selector=f"{LAST_ANSWER} [data-testid=citation]")
    assert any("4711" in text for text in cited), cited
    await browser.screenshot("04-citations")
    second_id = await browser.attribute("[data-testid=chat]", "data-conversation-id")
    assert second_id and second_id != conversation_id

    # Stop mid-answer: the stream ends, the answer is kept as interrupted.
    await _send(browser, "Tell me everything you remember about me, in detail please.")
    await _watch_growth(browser, observations=3)
    await browser.click("[data-testid=stop]")
    await _wait_answer_state(browser, {"interrupted"})
    stopped = await _answer_state(browser)
    label = await browser.text(f"{LAST_ANSWER} [data-testid=answer-state]") or ""
    assert label.startswith("Stopped"), label
    assert await browser.count(f"{LAST_ANSWER} [data-testid=ask-again]") == 1
    await browser.wait_for("[data-testid=send]", state="attached")
    stopped_id = await browser.attribute(LAST_ANSWER, "data-message-id")
    assert stopped_id
    stored = await _stored_turn(gateway, key, second_id, stopped_id)
    assert stored.status == resources_pb2.MESSAGE_STATUS_INTERRUPTED
    assert stored.finish_reason == resources_pb2.FINISH_REASON_INTERRUPTED
    assert _words(stored.text).startswith(_words(stopped["text"]))
    assert len(stored.text.split()) < 60  # cut short: the whole answer is longer
    # Nothing arrives after the stop (the stream is cancelled, not just hidden).
    await asyncio.sleep(1.0)
    assert await _answer_state(browser) == stopped
    await browser.screenshot("05-stopped")

    # The conversation list and a conversation's history after a reload (the key survives).
    await browser.call("reload")
    await browser.wait_for("[data-testid=chat]")
    await browser.wait_until(
        "() => document.querySelectorAll('[data-testid=conversation]').length === 2"
    )
    titles = await browser.call("texts", selector="[data-testid=conversation]")
    assert "What is my locker code?" in titles[0]  # newest first
    assert "My locker code is 4711" in titles[1]
    await browser.click(f"[data-testid=conversation][data-conversation-id='{second_id}']")
    await browser.wait_until("() => document.querySelectorAll('[data-testid=answer]').length === 2")
    states = await browser.evaluate(
        "() => [...document.querySelectorAll('[data-testid=answer]')].map(a => a.dataset.state)"
    )
    assert states == ["done", "interrupted"]
    assert await browser.count("[data-testid=question]") == 2
    await browser.screenshot("06-history")
    await _assert_no_page_errors(browser)


async def _wait_history(browser: Browser, condition: str, arg: object = None) -> dict[str, object]:
    """Waits until the page shows a conversation's history (no live turn) for which the
    JavaScript `condition(view, arg)` holds; `view` lists its questions and answers."""
    view: dict[str, object] = await browser.wait_until(
        """(arg) => {
            if (document.querySelector('[data-testid=turn]')) return false;
            const versions = (el) => {
                const s = el.querySelector('[data-testid=siblings]');
                return s ? [Number(s.dataset.index), Number(s.dataset.count)] : [1, 1];
            };
            const view = {
                questions: [...document.querySelectorAll('[data-testid=question]')].map((q) => ({
                    id: q.dataset.messageId, text: q.querySelector('.text').innerText,
                    versions: versions(q) })),
                answers: [...document.querySelectorAll('[data-testid=answer]')].map((a) => ({
                    id: a.dataset.messageId, state: a.dataset.state,
                    text: a.querySelector('[data-testid=answer-text]')?.innerText ?? '',
                    versions: versions(a) })),
            };
            return (CONDITION)(view, arg) ? view : false;
        }""".replace("CONDITION", condition),
        arg,
        timeout=30,
    )
    return view


async def _active_branch(
    gateway: gateway_pb2_grpc.GatewayServiceStub, key: str, conversation_id: str
) -> list[resources_pb2.Message]:
    response = await gateway.GetConversation(
        gateway_pb2.GetConversationRequest(conversation_id=conversation_id), metadata=_auth(key)
    )
    return list(response.messages)


async def _stored_branch(
    gateway: gateway_pb2_grpc.GatewayServiceStub, key: str, conversation_id: str, *, length: int
) -> list[resources_pb2.Message] | None:
    """The active branch once it holds `length` messages, else None."""
    stored = await _active_branch(gateway, key, conversation_id)
    return stored if len(stored) >= length else None


def _same_as_stored(view: dict[str, object], stored: list[resources_pb2.Message]) -> None:
    """The page shows the stored active branch: the same messages, texts and versions."""
    questions = view["questions"]
    answers = view["answers"]
    assert isinstance(questions, list) and isinstance(answers, list)
    shown = [*questions, *answers]
    expected = [m for m in stored if m.role == resources_pb2.ROLE_USER] + [
        m for m in stored if m.role == resources_pb2.ROLE_ASSISTANT
    ]
    assert [m["id"] for m in shown] == [m.message_id for m in expected]
    for message, page in zip(expected, shown, strict=True):
        assert _words(page["text"]) == _words(message.text)
        assert page["versions"] == [message.sibling_index + 1, message.sibling_count]


async def test_regenerate_edit_and_switch_between_versions(
    stack: Stack, page_url: str, gateway: gateway_pb2_grpc.GatewayServiceStub, browser: Browser
) -> None:
    """Regenerate adds a second answer (2 / 2), "previous version" switches back to the first
    (SetActiveBranch),
    Edit adds a second question with its own answer, and the history shows the active branch
    as stored, also after a reload."""
    key = await create_key(stack, unique("tenant"), unique("user"))
    await _sign_in(browser, page_url, key)
    await _send(browser, "Tell me about apples.")
    await _wait_answer_state(browser, {"done"})
    conversation_id = await browser.attribute("[data-testid=chat]", "data-conversation-id")
    first_answer = await browser.attribute(LAST_ANSWER, "data-message-id")
    assert conversation_id and first_answer

    # Regenerate: a new answer streams in place of the old one, then the history shows 2 / 2.
    await browser.click(f"{LAST_ANSWER} [data-testid=regenerate]")
    await browser.wait_for("[data-testid=turn][data-branch=regenerate]", state="attached")
    view = await _wait_history(
        browser,
        "(v, first) => v.answers.length === 1 && v.answers[0].id !== first "
        "&& v.answers[0].versions[1] === 2",
        first_answer,
    )
    await browser.screenshot("01-regenerated")
    stored = await _active_branch(gateway, key, conversation_id)
    _same_as_stored(view, stored)
    assert stored[1].sibling_message_ids[0] == first_answer
    assert view["answers"][0]["versions"] == [2, 2]  # type: ignore[index]

    # Previous version: back to the first answer (the active branch is switched on the server).
    await browser.click("[data-testid=answer] [data-testid=previous-version]")
    view = await _wait_history(browser, "(v, first) => v.answers[0]?.id === first", first_answer)
    await browser.screenshot("02-first-version")
    stored = await _active_branch(gateway, key, conversation_id)
    _same_as_stored(view, stored)
    assert view["answers"][0]["versions"] == [1, 2]  # type: ignore[index]

    # Edit the question: a second question beside the first, answered on its own branch.
    await browser.click("[data-testid=question] [data-testid=edit]")
    await browser.fill("[data-testid=edit-text]", "Tell me about pears instead.")
    await browser.screenshot("03-editing")
    await browser.click("[data-testid=edit-send]")
    await browser.wait_for("[data-testid=turn][data-branch=edit]", state="attached")
    view = await _wait_history(
        browser,
        "(v) => v.questions.length === 1 && v.questions[0].text.includes('pears') "
        "&& v.answers.length === 1 && v.answers[0].state === 'done'",
    )
    await browser.screenshot("04-edited")
    stored = await _active_branch(gateway, key, conversation_id)
    _same_as_stored(view, stored)
    assert view["questions"][0]["versions"] == [2, 2]  # type: ignore[index]
    assert view["answers"][0]["versions"] == [1, 1]  # type: ignore[index]
    assert "pears" in stored[1].text  # the offline model answers the edited question

    # Previous version of the question: back to the first one, with its last active answer.
    await browser.click("[data-testid=question] [data-testid=previous-version]")
    view = await _wait_history(browser, "(v) => v.questions[0]?.text.includes('apples')")
    stored = await _active_branch(gateway, key, conversation_id)
    _same_as_stored(view, stored)

    # The active branch is the conversation's: a reload shows the same.
    await browser.call("reload")
    await browser.click(f"[data-testid=conversation][data-conversation-id='{conversation_id}']")
    view = await _wait_history(browser, "(v) => v.questions[0]?.text.includes('apples')")
    _same_as_stored(view, stored)
    await browser.screenshot("05-after-reload")
    tree = await gateway.GetConversation(
        gateway_pb2.GetConversationRequest(
            conversation_id=conversation_id, view=gateway_pb2.CONVERSATION_VIEW_TREE
        ),
        metadata=_auth(key),
    )
    roles = [m.role for m in tree.messages]
    assert roles.count(resources_pb2.ROLE_USER) == 2
    assert roles.count(resources_pb2.ROLE_ASSISTANT) == 3
    await _assert_no_page_errors(browser)


async def test_operator_answers_a_handed_off_conversation(
    stack: Stack, page_url: str, gateway: gateway_pb2_grpc.GatewayServiceStub, browser: Browser
) -> None:
    """The user asks for a person; on the operator page (another tab, an `operator` key) the
    conversation waits, is read, answered (the reply appears live in the user's tab, through
    WatchConversation) and given back to the bot, which answers again."""
    tenant = unique("tenant")
    user = unique("user")
    key = await create_key(stack, tenant, user)
    operator_key = await create_key(stack, tenant, unique("operator"), roles=("operator",))
    await _sign_in(browser, page_url, key)
    await _send(browser, "I need help with my order 1234.")
    await _wait_answer_state(browser, {"done"})
    conversation_id = await browser.attribute("[data-testid=chat]", "data-conversation-id")
    assert conversation_id
    await browser.click("[data-testid=request-handoff]")
    await browser.wait_for("[data-testid=handoff][data-mode=human]")
    await _send(browser, "Is anybody there?")
    await _wait_answer_state(browser, {"done"})
    assert "person" in (await _answer_state(browser))["text"]
    await browser.screenshot("01-user-handed-off")
    try:
        await browser.call("usePage", name="operator")
        # A chat key is refused on the operator page.
        await browser.goto(page_url + "operator")
        await browser.fill("[data-testid=api-key]", key)
        await browser.click("[data-testid=sign-in-button]")
        await browser.wait_for("[data-testid=sign-in-error]")
        assert await browser.text("[data-testid=sign-in-error]") == (
            "This API key has no operator role."
        )
        await browser.fill("[data-testid=api-key]", operator_key)
        await browser.click("[data-testid=sign-in-button]")
        waiting = f"[data-testid=waiting-conversation][data-conversation-id='{conversation_id}']"
        await browser.wait_for(waiting)
        assert user in (await browser.text(waiting) or "")
        await browser.click(waiting)
        await browser.wait_until(
            "() => document.querySelectorAll('[data-testid=user-message]').length === 2"
        )
        read = await browser.call("texts", selector="[data-testid=messages] .message")
        assert "order 1234" in read[0] and "Is anybody there?" in read[-1], read
        assert await browser.count("[data-testid=assistant-message]") == 1
        await browser.screenshot("02-operator-reads")
        await browser.fill("[data-testid=reply-text]", "Hello, this is Ana from support.")
        await browser.click("[data-testid=reply-send]")
        await browser.wait_for("[data-testid=operator-message]")

        # The user's tab shows the reply as it is posted (the watch stream).
        await browser.call("usePage", name="main")
        await browser.wait_for("[data-testid=operator-reply]")
        assert await browser.text("[data-testid=operator-reply] .text") == (
            "Hello, this is Ana from support."
        )
        await browser.screenshot("03-user-sees-reply")

        await browser.call("usePage", name="operator")
        await browser.click("[data-testid=release]")
        await browser.wait_for("[data-testid=handoff][data-mode=bot]")
        await browser.wait_for(waiting, state="detached")
        await browser.screenshot("04-operator-released")
    finally:
        await browser.call("usePage", name="main")
        await browser.call("closePage", name="operator")
    # Given back: the user's tab says so. After a reload, the history shows the person's
    # reply in its place.
    await browser.wait_for("[data-testid=handoff][data-mode=bot]")
    stored = await _active_branch(gateway, key, conversation_id)
    assert [m.role for m in stored] == [
        resources_pb2.ROLE_USER,
        resources_pb2.ROLE_ASSISTANT,
        resources_pb2.ROLE_USER,
        resources_pb2.ROLE_OPERATOR,
    ]
    assert stored[3].text == "Hello, this is Ana from support."
    await browser.call("reload")
    await browser.click(f"[data-testid=conversation][data-conversation-id='{conversation_id}']")
    await browser.wait_for("[data-testid=operator-reply]")
    await browser.screenshot("05-history-with-reply")
    # The bot answers again, after the person's reply.
    await _send(browser, "Thanks! One more question for the bot.")
    await _wait_answer_state(browser, {"done"})
    # The history holds the turn once the message log's consumer has stored it.
    stored = await poll(lambda: _stored_branch(gateway, key, conversation_id, length=6), timeout=10)
    assert [m.role for m in stored][-3:] == [
        resources_pb2.ROLE_OPERATOR,
        resources_pb2.ROLE_USER,
        resources_pb2.ROLE_ASSISTANT,
    ]
    await _assert_no_page_errors(browser, allowed="status of 403|PermissionDenied")


async def _focused(browser: Browser) -> dict[str, str]:
    focused: dict[str, str] = await browser.evaluate(
        """() => {
            const el = document.activeElement;
            return { tag: el?.tagName ?? '', testid: el?.dataset?.testid ?? '',
                     label: el?.getAttribute('aria-label') ?? '' };
        }"""
    )
    return focused


# A control in the accessibility tree without a name: `- button` instead of `- button "Send"`.
_UNNAMED = re.compile(r"^\s*- (button|textbox|link|checkbox|combobox)\s*(\[[^\]]*\])?\s*:?\s*$")


def _unnamed_controls(snapshot: str) -> list[str]:
    return [line for line in snapshot.splitlines() if _UNNAMED.match(line)]


async def test_keyboard_only_with_screen_reader_names_on_a_narrow_screen(
    stack: Stack, page_url: str, browser: Browser
) -> None:
    """A 375 px wide screen and no mouse: sign in, ask, rate the answer and reach every
    control with Tab / Shift+Tab / Enter; every control has an accessible name (the
    browser's own accessibility tree) and nothing is wider than the screen."""
    key = await create_key(stack, unique("tenant"), unique("user"))
    await browser.call("setViewport", width=375, height=740)
    try:
        await browser.goto(page_url)
        await browser.wait_for("[data-testid=sign-in]")
        await browser.call("keyboard", key="Tab")
        assert (await _focused(browser))["testid"] == "api-key"
        await browser.call("type", text=key)
        await browser.call("keyboard", key="Enter")
        await browser.wait_for("[data-testid=chat]")
        # The composer has the focus after sign-in.
        await browser.wait_until("() => document.activeElement?.dataset.testid === 'composer'")
        await browser.call("type", text="Hello from the keyboard.")
        await browser.call("keyboard", key="Enter")
        await browser.wait_for("[data-testid=turn]", state="attached")
        await _wait_answer_state(browser, {"done"})
        # Shift+Tab from the composer reaches the answer's controls, in reading order.
        await browser.wait_until("() => document.activeElement?.dataset.testid === 'composer'")
        seen = []
        for _ in range(6):
            await browser.call("keyboard", key="Shift+Tab")
            seen.append(await _focused(browser))
            if seen[-1]["testid"] == "regenerate":
                break
        assert [f["label"] for f in seen] == [
            "Bad answer",
            "Good answer",
            "Regenerate this answer",
        ], seen
        await browser.call("keyboard", key="Tab")  # back to "Good answer"
        await browser.call("keyboard", key="Enter")
        await browser.wait_until(
            "(s) => document.querySelector(s)?.dataset.status === 'saved'",
            f"{LAST_ANSWER} [data-testid=feedback]",
        )
        rating = await browser.attribute(f"{LAST_ANSWER} [data-testid=feedback]", "data-rating")
        assert rating == "up"
        await browser.screenshot("01-narrow-keyboard")

        snapshot: str = await browser.call("ariaSnapshot", selector="body")
        (browser.out_dir / "aria-snapshot.yaml").write_text(snapshot)
        assert _unnamed_controls(snapshot) == [], snapshot
        for expected in (
            'navigation "Conversations"',
            'log "Messages"',
            'textbox "Message"',
            'button "Good answer"',
            'button "Bad answer"',
            'button "Regenerate this answer"',
            'button "Edit this message"',
            'button "Talk to a person"',
            'button "+ New chat"',
            'article "Answer"',
        ):
            assert expected in snapshot, (expected, snapshot)
        # Nothing wider than the screen (no sideways scrolling).
        widths = await browser.evaluate(
            "() => [document.documentElement.scrollWidth, window.innerWidth]"
        )
        assert widths[0] <= widths[1] == 375, widths
        # The documents view too.
        await browser.click("[data-testid=open-documents]")
        await browser.wait_for("[data-testid=documents]")
        snapshot = await browser.call("ariaSnapshot", selector="body")
        assert _unnamed_controls(snapshot) == [], snapshot
        assert 'region "Documents"' in snapshot, snapshot
        # The sign-in form and the operator page are named too.
        await browser.evaluate("() => sessionStorage.clear()")
        await browser.goto(page_url + "operator")
        await browser.wait_for("[data-testid=sign-in]")
        snapshot = await browser.call("ariaSnapshot", selector="body")
        assert _unnamed_controls(snapshot) == [], snapshot
        assert 'textbox "API key"' in snapshot, snapshot
        await browser.screenshot("02-narrow-operator-sign-in")
    finally:
        await browser.call("setViewport", width=1100, height=800)
    await _assert_no_page_errors(browser)


async def _stored_documents(
    gateway: gateway_pb2_grpc.GatewayServiceStub, key: str
) -> list[resources_pb2.Document]:
    response = await gateway.ListDocuments(gateway_pb2.ListDocumentsRequest(), metadata=_auth(key))
    return list(response.documents)


# The ferry PDF's timetable page: one passage longer than a citation's 200-character excerpt,
# whose last line only the whole passage shows.
FERRY_TIMES = [
    "The ferry leaves at 09:40.",
    "It calls at Eastholm, Brackwater and the Saltmere quay on the way across the fjord.",
    "Bicycles travel free of charge; cars must be booked a day ahead at the harbour office.",
    "In winter storms the crossing may be cancelled at short notice by the harbour master.",
    "The last ferry back to Glimmerbrook leaves Saltmere at 23:05.",
]


async def test_upload_list_cite_and_delete_documents(
    stack: Stack, page_url: str, gateway: gateway_pb2_grpc.GatewayServiceStub, browser: Browser
) -> None:
    """Text, markdown and PDF files uploaded through the edge (UploadDocument over gRPC-Web)
    with a progress bar each; the list is the stored one; an answer cites the PDF and its
    passage opens in a dialog that leads to the document; a delete removes it for the tenant."""
    key = await create_key(stack, unique("tenant"), unique("user"))
    files = {
        "notes.txt": b"The Quillon bridge closes for repairs at 22:15 every Sunday.\n",
        "guide.md": b"# Library guide\n\nThe Varnholt library lends **telescopes** for a week.\n",
        "ferry.pdf": make_pdf([["Glimmerbrook ferry timetable"], FERRY_TIMES]),
        "report.docx": b"not a supported type",
    }
    paths = []
    for name, content in files.items():
        path = browser.out_dir / name
        path.write_bytes(content)
        paths.append(str(path))
    await _sign_in(browser, page_url, key)
    await browser.click("[data-testid=open-documents]")
    await browser.wait_for("[data-testid=documents]")
    await browser.call("setInputFiles", selector="[data-testid=upload-input]", files=paths)
    await browser.wait_until(
        "() => { const rows = [...document.querySelectorAll('[data-testid=upload]')];"
        " return rows.length === 4 && rows.every((r) => ['done', 'failed'].includes("
        "r.dataset.state)) && document.querySelectorAll('[data-testid=document]').length === 3; }",
        timeout=60,
    )
    await browser.screenshot("01-uploaded")
    rows = await browser.evaluate(
        """() => [...document.querySelectorAll('[data-testid=upload]')].map((r) => ({
            name: r.dataset.name, state: r.dataset.state, sent: Number(r.dataset.sent),
            size: Number(r.dataset.size), value: r.querySelector('progress').value,
            max: r.querySelector('progress').max, text: r.innerText }))"""
    )
    by_name = {row["name"]: row for row in rows}
    for name in ("notes.txt", "guide.md", "ferry.pdf"):
        row = by_name[name]
        assert row["state"] == "done", row
        # The bar ends full: every byte of the file was sent.
        assert row["sent"] == row["size"] == len(files[name]) and row["value"] == row["max"], row
        assert "Ready" in row["text"], row
    assert by_name["report.docx"]["state"] == "failed"
    assert "Only text" in by_name["report.docx"]["text"]
    stored = await _stored_documents(gateway, key)
    assert sorted(d.name for d in stored) == ["ferry.pdf", "guide.md", "notes.txt"]
    assert all(d.chunk_count == 1 for d in stored)
    shown = await browser.evaluate(
        "() => [...document.querySelectorAll('[data-testid=document]')].map((d) => d.dataset.name)"
    )
    assert shown == [d.name for d in stored]  # newest first

    # An answer cites the PDF; its passage opens in a dialog, which leads to the document.
    await browser.click("[data-testid=new-chat]")
    await _send(browser, "When does the Glimmerbrook ferry leave?")
    await _wait_answer_state(browser, {"done"})
    await browser.click(f"{LAST_ANSWER} [data-testid=citations] summary")
    ferry = next(d for d in stored if d.name == "ferry.pdf")
    cited = f"{LAST_ANSWER} [data-testid=citation]:has-text('ferry.pdf')"
    await browser.click(f"{cited} [data-testid=open-source]")
    await browser.wait_for("[data-testid=source-dialog]")
    assert await browser.attribute("[data-testid=source-dialog]", "data-document-id") == (
        ferry.document_id
    )
    # The whole passage (GetDocumentChunk), not only the citation's excerpt: its last line is
    # beyond the excerpt's 200 characters; the excerpt is highlighted in it.
    await browser.wait_for("[data-testid=source-text][data-state=loaded]")
    passage = await browser.text("[data-testid=source-text]") or ""
    excerpt = await browser.text(f"{cited} blockquote") or ""
    assert "09:40" in passage and FERRY_TIMES[-1] in passage
    assert len(passage) > 200 and FERRY_TIMES[-1] not in excerpt
    assert (await browser.text("[data-testid=source-excerpt]") or "").strip() == excerpt.strip()
    assert (await browser.text("[data-testid=source-position]") or "").startswith("Passage 1 of 1")
    await browser.screenshot("02-cited-passage")
    await browser.click("[data-testid=show-document]")
    await browser.wait_for(
        f"[data-testid=document].highlight[data-document-id='{ferry.document_id}']"
    )

    # Delete (after a confirmation): gone for the whole tenant.
    guide = next(d for d in stored if d.name == "guide.md")
    row = f"[data-testid=document][data-document-id='{guide.document_id}']"
    await browser.click(f"{row} [data-testid=delete-document]")
    await browser.click(f"{row} [data-testid=confirm-delete]")
    await browser.wait_for(row, state="detached")
    assert sorted(d.name for d in await _stored_documents(gateway, key)) == [
        "ferry.pdf",
        "notes.txt",
    ]
    await browser.screenshot("03-deleted")
    # On a slow uplink the bar moves while the file is sent (XMLHttpRequest's upload progress).
    slow = browser.out_dir / "handbook.txt"
    lines = (b"Handbook line %d about the Quillon bridge.\n" % i for i in range(1200))
    slow.write_bytes(b"".join(lines))  # 53 KB: about 2.6 s at 20 KB/s
    await browser.call("throttleUpload", bytesPerSecond=20_000)
    try:
        picked = [str(slow)]
        await browser.call("setInputFiles", selector="[data-testid=upload-input]", files=picked)
        moving = "[data-testid=upload][data-name='handbook.txt']"
        seen = await browser.wait_until(
            "(s) => { const r = document.querySelector(s); const sent = Number(r?.dataset.sent);"
            " return r && sent > 0 && sent < Number(r.dataset.size) ? sent : false; }",
            moving,
        )
        await browser.screenshot("04-uploading")
        await browser.wait_for(f"{moving}[data-state=done]", timeout=60)
    finally:
        await browser.call("throttleUpload", bytesPerSecond=0)
    assert 0 < seen < slow.stat().st_size
    assert int(await browser.attribute(moving, "data-reports") or 0) >= 3
    await _assert_no_page_errors(browser)


async def test_bad_key_is_refused_with_a_clear_message(
    stack: Stack, page_url: str, browser: Browser
) -> None:
    await browser.goto(page_url)
    await browser.fill("[data-testid=api-key]", "cp_nosuchkey_" + "0" * 43)
    await browser.click("[data-testid=sign-in-button]")
    await browser.wait_for("[data-testid=sign-in-error]")
    message = await browser.text("[data-testid=sign-in-error]")
    assert message == "This API key was not accepted. Sign in again."
    assert await browser.evaluate("() => sessionStorage.length") == 0
    await browser.screenshot("01-bad-key")
    # A key that stops working while signed in sends the page back to sign-in.
    await browser.evaluate("() => sessionStorage.setItem('chatplane.apiKey', 'cp_revoked_x')")
    await browser.call("reload")
    await browser.wait_for("[data-testid=sign-in-error]")
    assert await browser.text("[data-testid=sign-in-error]") == message
    await browser.screenshot("02-key-refused-after-reload")
    await _assert_no_page_errors(browser, allowed="status of 401")


async def test_rate_limit_shows_the_retry_time(
    stack: Stack, page_url: str, gateway: gateway_pb2_grpc.GatewayServiceStub, browser: Browser
) -> None:
    key = await create_key(stack, unique("tenant"), unique("user"))
    await _sign_in(browser, page_url, key)
    # Use up the rest of this user's burst directly; the refill is 3 a minute.
    for _ in range(100):
        try:
            await gateway.ListConversations(
                gateway_pb2.ListConversationsRequest(), metadata=_auth(key)
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            break
    else:
        pytest.fail("the rate limit never applied")
    await _send(browser, "Hello?")
    await _wait_answer_state(browser, {"failed"})
    error = await browser.text(f"{LAST_ANSWER} [data-testid=answer-error]") or ""
    notice = await browser.text("[data-testid=notice-text]") or ""
    await browser.screenshot("01-rate-limited")
    found = re.search(r"Try again in (\d+) s", notice)
    assert found, notice
    # 1 request at 3 a minute: about 20 s (RetryInfo through Envoy's gRPC-Web trailers).
    assert 10 <= int(found.group(1)) <= 20, notice
    assert re.search(r"Too many requests\. Try again in \d+ s\.", error), error
    assert await browser.attribute("[data-testid=send]", "disabled") is not None
    # The countdown runs.
    await browser.wait_until(
        "(n) => { const m = /in (\\d+) s/.exec(document.querySelector("
        "'[data-testid=notice-text]')?.innerText ?? ''); return m && Number(m[1]) < n; }",
        int(found.group(1)),
        timeout=5,
    )
    await _assert_no_page_errors(browser, allowed="status of 429")


async def test_resumes_after_the_edge_restarts_without_a_second_generation(
    stack: Stack, page_url: str, gateway: gateway_pb2_grpc.GatewayServiceStub, browser: Browser
) -> None:
    """Envoy dies mid-answer: the generation goes on (the page asks for resumable answers),
    the page resumes it with ResumeChat after the last delta it received once Envoy is back,
    and the whole answer is shown once, generated once."""
    key = await create_key(stack, unique("tenant"), unique("user"))
    await _sign_in(browser, page_url, key)
    model_calls = await _model_calls(stack)
    await _send(browser, "Please write a long answer about reconnecting.")
    await _watch_growth(browser, observations=3)
    client_message_id = await browser.attribute("[data-testid=turn]", "data-client-message-id")
    # The connection drops mid-answer: Envoy is killed, then started again on its port.
    edge = stack.services["edge"]
    edge.kill()
    await edge.process.wait()
    await _wait_answer_state(browser, {"reconnecting"})
    assert "connection" in (await browser.text(f"{LAST_ANSWER} [data-testid=answer-state]") or "")
    received = int(await browser.attribute(LAST_ANSWER, "data-last-sequence") or 0)
    assert received > 0
    await browser.screenshot("01-reconnecting")
    await stack.start_service("edge")
    await _wait_answer_state(browser, {"done"}, timeout=60)
    await browser.screenshot("02-resumed")
    assert await browser.attribute(LAST_ANSWER, "data-resumed") == "true"
    assert await browser.attribute(LAST_ANSWER, "data-replayed") == "false"
    assert await browser.count(f"{LAST_ANSWER} [data-testid=resumed-note]") == 1
    counts = _event_counts(await browser.attribute(LAST_ANSWER, "data-events"))
    # One Chat `started`, one from the ResumeChat that got through; one `done`.
    assert counts["started"] == 2 and counts["done"] == 1, counts
    assert int(await browser.attribute(LAST_ANSWER, "data-resumes") or 0) >= 1
    # The deltas were contiguous: none twice, none missing.
    delta_count = int(await browser.attribute(LAST_ANSWER, "data-delta-count") or 0)
    assert delta_count == int(await browser.attribute(LAST_ANSWER, "data-last-sequence") or 0)
    assert delta_count == counts["delta"] > received
    answer_id = await browser.attribute(LAST_ANSWER, "data-message-id")
    conversation_id = await browser.attribute("[data-testid=chat]", "data-conversation-id")
    assert answer_id and conversation_id
    stored = await _stored_turn(gateway, key, conversation_id, answer_id)
    assert stored.status == resources_pb2.MESSAGE_STATUS_COMPLETE
    page = await _answer_state(browser)
    assert _words(page["text"]) == _words(stored.text)
    # One turn: one question and one answer.
    history = await gateway.GetConversation(
        gateway_pb2.GetConversationRequest(conversation_id=conversation_id), metadata=_auth(key)
    )
    assert [m.role for m in history.messages] == [
        resources_pb2.ROLE_USER,
        resources_pb2.ROLE_ASSISTANT,
    ]
    assert history.messages[0].client_message_id == client_message_id
    # Generated once: the Agent called the model once for this turn.
    assert await _model_calls(stack) == model_calls + 1


async def test_offline_browser_sends_once_back_online(
    stack: Stack, page_url: str, gateway: gateway_pb2_grpc.GatewayServiceStub, browser: Browser
) -> None:
    """The browser loses the network before its message got through: the page says so, keeps
    retrying with the same key, and the message is answered once when the network is back."""
    key = await create_key(stack, unique("tenant"), unique("user"))
    await _sign_in(browser, page_url, key)
    await browser.call("setOffline", offline=True)
    try:
        await browser.wait_for("[data-testid=offline]")
        await _send(browser, "Are you there?")
        await _wait_answer_state(browser, {"reconnecting"})
        await browser.screenshot("01-offline")
    finally:
        await browser.call("setOffline", offline=False)
    await _wait_answer_state(browser, {"done"}, timeout=60)
    await browser.wait_for("[data-testid=offline]", state="detached")
    await browser.screenshot("02-back-online")
    conversation_id = await browser.attribute("[data-testid=chat]", "data-conversation-id")
    assert conversation_id

    async def stored_messages() -> list[resources_pb2.Message]:
        response = await gateway.GetConversation(
            gateway_pb2.GetConversationRequest(conversation_id=conversation_id),
            metadata=_auth(key),
        )
        return list(response.messages) if len(response.messages) >= 2 else []

    messages = await poll(stored_messages)
    assert [m.role for m in messages] == [
        resources_pb2.ROLE_USER,
        resources_pb2.ROLE_ASSISTANT,
    ]
    assert await browser.attribute(LAST_ANSWER, "data-replayed") == "false"


async def test_model_text_is_sanitised(stack: Stack, page_url: str, browser: Browser) -> None:
    """The offline model repeats the question in its answer, so HTML in a question comes back
    as model text: it is shown as text, never run (and the page's CSP reports no attempt)."""
    key = await create_key(stack, unique("tenant"), unique("user"))
    await _sign_in(browser, page_url, key)
    await _send(
        browser,
        'x <img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
        "[go](javascript:window.__xss=3) **bold**",
    )
    await _wait_answer_state(browser, {"done"})
    found = await browser.evaluate(
        """(selector) => {
            const el = [...document.querySelectorAll(selector)].pop();
            const answer = el.querySelector('[data-testid=answer-text]');
            return {
                xss: window.__xss ?? null,
                img: answer.querySelectorAll('img, script').length,
                handlers: [...answer.querySelectorAll('*')].filter(
                    (n) => [...n.attributes].some((a) => a.name.startsWith('on'))).length,
                hrefs: [...answer.querySelectorAll('a')].map((a) => a.getAttribute('href')),
                bold: answer.querySelectorAll('strong').length,
                text: answer.innerText,
            };
        }""",
        LAST_ANSWER,
    )
    await browser.screenshot("01-sanitised")
    assert found["xss"] is None
    assert found["img"] == 0
    assert found["handlers"] == 0
    assert not any(href and href.lower().startswith("javascript") for href in found["hrefs"])
    assert found["bold"] >= 1  # markdown still renders
    # HTML the model writes is shown as the text it is.
    assert '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>' in found["text"]
    await _assert_no_page_errors(browser)
