import { Code, ConnectError } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import type { ChatRequest, ChatResponseSchema } from "@gen/chatplane/v1/gateway_pb";
import { FinishReason } from "@gen/chatplane/v1/resources_pb";
import { afterEach, describe, expect, it, vi } from "vitest";
import { fakeGateway } from "./testing/fakeGateway";
import { rateLimited } from "./testing/retryInfo";
import { newTurn, runTurn, type TurnState, type TurnView } from "./turn";

type Event = MessageInitShape<typeof ChatResponseSchema>;

const started = (replayed = false): Event => ({
  event: {
    case: "started",
    value: {
      conversationId: "c1",
      userMessageId: "u1",
      assistantMessageId: "a1",
      model: "m",
      replayed,
    },
  },
});
const delta = (text: string, sequence: number): Event => ({
  event: { case: "delta", value: { text, sequence: BigInt(sequence) } },
});
const done = (finishReason = FinishReason.STOP, deltaCount = 1): Event => ({
  event: { case: "done", value: { finishReason, model: "m", deltaCount: BigInt(deltaCount) } },
});
const usage: Event = { event: { case: "usage", value: { inputTokens: 5, outputTokens: 3 } } };
const citation: Event = {
  event: { case: "citation", value: { kind: 1, sourceId: "s1", title: "t", snippet: "x", score: 0.5 } },
};

/** A Gateway whose Chat runs `attempts[i]` on the i-th call; the requests are recorded. */
function scriptedGateway(
  attempts: ((request: ChatRequest, context: HandlerContext) => AsyncIterable<Event>)[],
) {
  const requests: ChatRequest[] = [];
  const gateway = fakeGateway({
    chat(request: ChatRequest, context: HandlerContext) {
      requests.push(request);
      const attempt = attempts[Math.min(requests.length, attempts.length) - 1];
      if (attempt === undefined) throw new Error("no attempts scripted");
      return attempt(request, context);
    },
  });
  return { gateway, requests };
}

async function* events(...list: Event[]): AsyncIterable<Event> {
  yield* list;
}

async function* thenFail(error: ConnectError, ...list: Event[]): AsyncIterable<Event> {
  yield* list;
  throw error;
}

function run(gateway: ReturnType<typeof scriptedGateway>["gateway"], controller = new AbortController()) {
  const states: TurnState[] = [];
  const updates: TurnView[] = [];
  const promise = runTurn(gateway, newTurn("hello", ""), controller.signal, (turn) => {
    updates.push(turn);
    if (states[states.length - 1] !== turn.state) states.push(turn.state);
  });
  return { promise, states, updates, controller };
}

afterEach(() => {
  vi.useRealTimers();
});

describe("runTurn", () => {
  it("renders every event of a streamed answer", async () => {
    const { gateway } = scriptedGateway([
      () => events(started(), citation, delta("Hel", 1), delta("lo", 2), usage, done(FinishReason.STOP, 2)),
    ]);
    const { promise, states } = run(gateway);
    const turn = await promise;
    expect(states).toEqual(["sending", "streaming", "done"]);
    expect(turn.answer).toBe("Hello");
    expect(turn.deltaCount).toBe(2);
    expect(turn.lastSequence).toBe(2);
    expect(turn.citations).toEqual([{ kind: "turn", sourceId: "s1", title: "t", snippet: "x", score: 0.5 }]);
    expect(turn.usage).toEqual({ inputTokens: 5, outputTokens: 3 });
    expect(turn.events).toEqual({ started: 1, delta: 2, citation: 1, usage: 1, done: 1 });
    expect(turn).toMatchObject({ conversationId: "c1", assistantMessageId: "a1", attempts: 1 });
  });

  it("reconnects after a drop with the same idempotency key and shows the replay once", async () => {
    const { gateway, requests } = scriptedGateway([
      () => thenFail(new ConnectError("upstream reset", Code.Unavailable), started(), delta("Par", 1), delta("tial", 2)),
      () => events(started(true), delta("Partial", 1), usage, done(FinishReason.INTERRUPTED)),
    ]);
    const { promise, states } = run(gateway);
    const turn = await promise;
    expect(states).toEqual(["sending", "streaming", "reconnecting", "streaming", "interrupted"]);
    expect(requests).toHaveLength(2);
    expect(requests[1]?.clientMessageId).toBe(requests[0]?.clientMessageId);
    expect(requests[0]?.clientMessageId).not.toBe("");
    expect(turn.answer).toBe("Partial"); // started over, not "PartialPartial"
    expect(turn.replayed).toBe(true);
    expect(turn.finishReason).toBe(FinishReason.INTERRUPTED);
    expect(turn.attempts).toBe(2);
  });

  it("treats a stream that ends without done as a drop", async () => {
    const { gateway, requests } = scriptedGateway([
      () => events(started(), delta("a", 1)),
      () => events(started(true), delta("ab", 1), usage, done()),
    ]);
    const turn = await run(gateway).promise;
    expect(requests).toHaveLength(2);
    expect(turn).toMatchObject({ state: "done", answer: "ab" });
  });

  it("waits out a rate limit met while reconnecting", async () => {
    const { gateway, requests } = scriptedGateway([
      () => thenFail(new ConnectError("gone", Code.Unavailable), started()),
      () => thenFail(rateLimited(0.2)),
      () => events(started(true), delta("ok", 1), usage, done()),
    ]);
    const turn = await run(gateway).promise;
    expect(requests).toHaveLength(3);
    expect(new Set(requests.map((r) => r.clientMessageId)).size).toBe(1);
    expect(turn.state).toBe("done");
  });

  it("does not retry a rate limit on the first attempt", async () => {
    const { gateway, requests } = scriptedGateway([
      () => thenFail(rateLimited(20)),
    ]);
    const turn = await run(gateway).promise;
    expect(requests).toHaveLength(1);
    expect(turn.state).toBe("failed");
    expect(turn.problem).toMatchObject({ kind: "rate-limited", retryAfterSeconds: 20 });
  });

  it("does not retry what a retry cannot fix", async () => {
    for (const code of [Code.Unauthenticated, Code.InvalidArgument, Code.NotFound]) {
      const { gateway, requests } = scriptedGateway([() => thenFail(new ConnectError("no", code))]);
      const turn = await run(gateway).promise;
      expect(requests).toHaveLength(1);
      expect(turn.state).toBe("failed");
    }
  });

  it("gives up after about a minute of failed reconnects", async () => {
    vi.useFakeTimers();
    const { gateway, requests } = scriptedGateway([() => thenFail(new ConnectError("down", Code.Unavailable))]);
    const { promise } = run(gateway);
    let settled = false;
    void promise.then(() => (settled = true));
    let waited = 0;
    while (!settled && waited < 120_000) {
      await vi.advanceTimersByTimeAsync(250);
      waited += 250;
    }
    const turn = await promise;
    expect(turn.state).toBe("failed");
    expect(turn.problem?.kind).toBe("unavailable");
    expect(requests.length).toBe(15);
    expect(waited).toBeGreaterThan(50_000);
    expect(waited).toBeLessThan(75_000);
  });

  it("stops while reconnecting when the user presses Stop", async () => {
    const { gateway, requests } = scriptedGateway([() => thenFail(new ConnectError("down", Code.Unavailable), started())]);
    const controller = new AbortController();
    const { promise, updates } = run(gateway, controller);
    await vi.waitFor(() => expect(updates.some((u) => u.state === "reconnecting")).toBe(true));
    controller.abort();
    const turn = await promise;
    expect(turn.state).toBe("interrupted");
    expect(turn.problem?.kind).toBe("cancelled");
    expect(requests).toHaveLength(1);
  });

  it("cancels the call when the user presses Stop mid-answer", async () => {
    let cancelled = false;
    const { gateway } = scriptedGateway([
      async function* (_request, context): AsyncIterable<Event> {
        yield started();
        yield delta("a", 1);
        await new Promise((resolve) => context.signal.addEventListener("abort", resolve));
        cancelled = true;
      },
    ]);
    const controller = new AbortController();
    const { promise, updates } = run(gateway, controller);
    await vi.waitFor(() => expect(updates.some((u) => u.answer === "a")).toBe(true));
    controller.abort();
    const turn = await promise;
    expect(turn).toMatchObject({ state: "interrupted", answer: "a", finishReason: FinishReason.INTERRUPTED });
    expect(turn.attempts).toBe(1);
    await vi.waitFor(() => expect(cancelled).toBe(true)); // the server saw the cancel
  });
});
