"""The reference web chat end to end: headless Chromium opens the page through Envoy (the edge)
against the real services, and everything the page shows is checked against what the Gateway
stored. Screenshots of each step are saved in the test's output folder."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import psycopg
import pytest
import pytest_asyncio

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


async def test_reconnects_after_the_edge_restarts_without_duplicating_the_turn(
    stack: Stack, page_url: str, gateway: gateway_pb2_grpc.GatewayServiceStub, browser: Browser
) -> None:
    key = await create_key(stack, unique("tenant"), unique("user"))
    await _sign_in(browser, page_url, key)
    await _send(browser, "Please write a long answer about reconnecting.")
    await _watch_growth(browser, observations=3)
    client_message_id = await browser.attribute("[data-testid=turn]", "data-client-message-id")
    # The connection drops mid-answer: Envoy is killed, then started again on its port.
    edge = stack.services["edge"]
    edge.kill()
    await edge.process.wait()
    await _wait_answer_state(browser, {"reconnecting"})
    assert "connection" in (await browser.text(f"{LAST_ANSWER} [data-testid=answer-state]") or "")
    await browser.screenshot("01-reconnecting")
    await stack.start_service("edge")
    await _wait_answer_state(browser, {"done", "interrupted"}, timeout=60)
    await browser.screenshot("02-recovered")
    assert await browser.attribute(LAST_ANSWER, "data-replayed") == "true"
    answer_id = await browser.attribute(LAST_ANSWER, "data-message-id")
    conversation_id = await browser.attribute("[data-testid=chat]", "data-conversation-id")
    assert answer_id and conversation_id
    stored = await _stored_turn(gateway, key, conversation_id, answer_id)
    # One turn: one question and one answer, whatever the retries.
    history = await gateway.GetConversation(
        gateway_pb2.GetConversationRequest(conversation_id=conversation_id), metadata=_auth(key)
    )
    assert [m.role for m in history.messages] == [
        resources_pb2.ROLE_USER,
        resources_pb2.ROLE_ASSISTANT,
    ]
    assert history.messages[0].client_message_id == client_message_id
    page = await _answer_state(browser)
    assert _words(page["text"]) == _words(stored.text)
    expected = "done" if stored.status == resources_pb2.MESSAGE_STATUS_COMPLETE else "interrupted"
    assert page["state"] == expected
    if expected == "interrupted":
        assert await browser.count(f"{LAST_ANSWER} [data-testid=recovered-note]") == 1


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
