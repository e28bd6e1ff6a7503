import { Code, ConnectError } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import type {
  CancelChatRequest,
  ChatRequest,
  ChatResponseSchema,
  ResumeChatRequest,
  ResumeChatResponseSchema,
} from "@gen/chatplane/v1/gateway_pb";
import { FinishReason } from "@gen/chatplane/v1/resources_pb";
import { afterEach, describe, expect, it, vi } from "vitest";
import { fakeGateway } from "./testing/fakeGateway";
import { rateLimited } from "./testing/retryInfo";
import { newTurn, runTurn, type BranchAction, type TurnState, type TurnView } from "./turn";

type Event = MessageInitShape<typeof ChatResponseSchema>;

const started = (replayed = false, resumed = false): Event => ({
  event: {
    case: "started",
    value: {
      conversationId: "c1",
      userMessageId: "u1",
      assistantMessageId: "a1",
      model: "m",
      replayed,
      resumed,
    },
  },
});
const resumedStart = started(false, true);
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

type Script<R> = (request: R, context: HandlerContext) => AsyncIterable<Event>;

/**
 * A Gateway whose Chat runs `attempts[i]` on the i-th call and ResumeChat `resumes[i]` on the
 * i-th resume; the requests (and CancelChat's) are recorded.
 */
function scriptedGateway(attempts: Script<ChatRequest>[], resumes: Script<ResumeChatRequest>[] = []) {
  const requests: ChatRequest[] = [];
  const resumeRequests: ResumeChatRequest[] = [];
  const cancelRequests: CancelChatRequest[] = [];
  const gateway = fakeGateway({
    chat(request: ChatRequest, context: HandlerContext) {
      requests.push(request);
      const attempt = attempts[Math.min(requests.length, attempts.length) - 1];
      if (attempt === undefined) throw new Error("no attempts scripted");
      return attempt(request, context);
    },
    resumeChat(request: ResumeChatRequest, context: HandlerContext) {
      resumeRequests.push(request);
      const attempt = resumes[Math.min(resumeRequests.length, resumes.length) - 1];
      if (attempt === undefined) throw new Error("no resumes scripted");
      // The scripts use ChatResponse's events; ResumeChatResponse's oneof is the same subset.
      return attempt(request, context) as AsyncIterable<MessageInitShape<typeof ResumeChatResponseSchema>>;
    },
    cancelChat(request: CancelChatRequest) {
      cancelRequests.push(request);
      return { cancelled: true };
    },
  });
  return { gateway, requests, resumeRequests, cancelRequests };
}

async function* events(...list: Event[]): AsyncIterable<Event> {
  yield* list;
}

async function* thenFail(error: ConnectError, ...list: Event[]): AsyncIterable<Event> {
  yield* list;
  throw error;
}

function run(
  gateway: ReturnType<typeof scriptedGateway>["gateway"],
  controller = new AbortController(),
  branch: BranchAction | null = null,
) {
  const states: TurnState[] = [];
  const updates: TurnView[] = [];
  const promise = runTurn(gateway, newTurn("hello", "c1", branch), controller.signal, (turn) => {
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
    expect(turn.citations).toEqual([
      { kind: "turn", sourceId: "s1", title: "t", snippet: "x", score: 0.5, documentId: "", chunkIndex: 0 },
    ]);
    expect(turn.usage).toEqual({ inputTokens: 5, outputTokens: 3 });
    expect(turn.events).toEqual({ started: 1, delta: 2, citation: 1, usage: 1, done: 1 });
    expect(turn).toMatchObject({ conversationId: "c1", assistantMessageId: "a1", attempts: 1 });
  });

  it("asks for a resumable answer", async () => {
    const { gateway, requests } = scriptedGateway([() => events(started(), delta("a", 1), usage, done())]);
    await run(gateway).promise;
    expect(requests[0]).toMatchObject({ text: "hello", resumable: true, conversationId: "c1" });
    expect(requests[0]?.branch.case).toBeUndefined();
  });

  it("resumes after a drop mid-answer from the last sequence received, without a second Chat", async () => {
    const { gateway, requests, resumeRequests } = scriptedGateway(
      [() => thenFail(new ConnectError("upstream reset", Code.Unavailable), started(), delta("Par", 1), delta("tial", 2))],
      [() => events(resumedStart, delta(" rest", 3), usage, done(FinishReason.STOP, 3))],
    );
    const { promise, states } = run(gateway);
    const turn = await promise;
    expect(states).toEqual(["sending", "streaming", "reconnecting", "streaming", "done"]);
    expect(requests).toHaveLength(1);
    expect(resumeRequests).toHaveLength(1);
    expect(resumeRequests[0]?.messageId).toBe("a1");
    expect(resumeRequests[0]?.afterSequence).toBe(2n);
    expect(turn).toMatchObject({ answer: "Partial rest", deltaCount: 3, lastSequence: 3, resumed: true, resumes: 1 });
    expect(turn.events).toMatchObject({ started: 2, delta: 3, done: 1 });
  });

  it("ignores deltas it has already", async () => {
    const { gateway } = scriptedGateway(
      [() => thenFail(new ConnectError("gone", Code.Unavailable), started(), delta("a", 1), delta("b", 2))],
      [() => events(resumedStart, delta("b", 2), delta("c", 3), usage, done())],
    );
    expect((await run(gateway).promise).answer).toBe("abc");
  });

  it("resumes a resume", async () => {
    const { gateway, resumeRequests } = scriptedGateway(
      [() => thenFail(new ConnectError("gone", Code.Unavailable), started(), delta("a", 1))],
      [
        () => thenFail(new ConnectError("gone", Code.Unavailable), resumedStart, delta("b", 2)),
        () => events(resumedStart, delta("c", 3), usage, done()),
      ],
    );
    const turn = await run(gateway).promise;
    expect(resumeRequests.map((r) => r.afterSequence)).toEqual([1n, 2n]);
    expect(turn).toMatchObject({ answer: "abc", state: "done", resumes: 2 });
  });

  it("retries Chat with the same key after a drop before started", async () => {
    const { gateway, requests, resumeRequests } = scriptedGateway([
      () => thenFail(new ConnectError("upstream reset", Code.Unavailable)),
      () => events(started(true), delta("Whole answer", 1), usage, done()),
    ]);
    const turn = await run(gateway).promise;
    expect(requests).toHaveLength(2);
    expect(resumeRequests).toHaveLength(0);
    expect(requests[1]?.clientMessageId).toBe(requests[0]?.clientMessageId);
    expect(requests[0]?.clientMessageId).not.toBe("");
    expect(turn).toMatchObject({ answer: "Whole answer", replayed: true, state: "done" });
  });

  it("resumes a replay from its start (a replay's sequence numbers are not the generation's)", async () => {
    const { gateway, resumeRequests } = scriptedGateway(
      [() => thenFail(new ConnectError("gone", Code.Unavailable), started(true), delta("Whole", 1))],
      [() => events(resumedStart, delta("Wh", 1), delta("ole", 2), usage, done())],
    );
    const turn = await run(gateway).promise;
    expect(resumeRequests[0]?.afterSequence).toBe(0n);
    expect(turn.answer).toBe("Whole");
  });

  it("asks Chat again when the resumed answer does not exist (failed before its first token)", async () => {
    const { gateway, requests, resumeRequests } = scriptedGateway(
      [
        () => thenFail(new ConnectError("gone", Code.Unavailable), started()),
        () => events(started(), delta("new", 1), usage, done()),
      ],
      [() => thenFail(new ConnectError("this message has no answer", Code.NotFound))],
    );
    const turn = await run(gateway).promise;
    expect(resumeRequests).toHaveLength(1);
    expect(requests).toHaveLength(2);
    expect(requests[1]?.clientMessageId).toBe(requests[0]?.clientMessageId);
    expect(turn).toMatchObject({ state: "done", answer: "new" });
  });

  it("treats a stream that ends without done as a drop", async () => {
    const { gateway, requests, resumeRequests } = scriptedGateway(
      [() => events(started(), delta("a", 1))],
      [() => events(resumedStart, delta("b", 2), usage, done())],
    );
    const turn = await run(gateway).promise;
    expect(requests).toHaveLength(1);
    expect(resumeRequests).toHaveLength(1);
    expect(turn).toMatchObject({ state: "done", answer: "ab" });
  });

  it("waits out a rate limit met while reconnecting", async () => {
    const { gateway, requests, resumeRequests } = scriptedGateway(
      [() => thenFail(new ConnectError("gone", Code.Unavailable), started())],
      [() => thenFail(rateLimited(0.2)), () => events(resumedStart, delta("ok", 1), usage, done())],
    );
    const turn = await run(gateway).promise;
    expect(requests).toHaveLength(1);
    expect(resumeRequests).toHaveLength(2);
    expect(turn.state).toBe("done");
  });

  it("sends a regenerate without text and an edit with it", async () => {
    const { gateway, requests } = scriptedGateway([() => events(started(), delta("a", 1), usage, done())]);
    await run(gateway, new AbortController(), { kind: "regenerate", userMessageId: "u0" }).promise;
    await run(gateway, new AbortController(), { kind: "edit", userMessageId: "u0" }).promise;
    expect(requests[0]).toMatchObject({ text: "", branch: { case: "regenerateMessageId", value: "u0" } });
    expect(requests[1]).toMatchObject({ text: "hello", branch: { case: "editMessageId", value: "u0" } });
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

  it("stops while reconnecting when the user presses Stop, and cancels the generation", async () => {
    const { gateway, requests, cancelRequests } = scriptedGateway(
      [() => thenFail(new ConnectError("down", Code.Unavailable), started())],
      [() => thenFail(new ConnectError("down", Code.Unavailable))],
    );
    const controller = new AbortController();
    const { promise, updates } = run(gateway, controller);
    await vi.waitFor(() => expect(updates.some((u) => u.state === "reconnecting")).toBe(true));
    controller.abort();
    const turn = await promise;
    expect(turn.state).toBe("interrupted");
    expect(turn.problem?.kind).toBe("cancelled");
    expect(requests).toHaveLength(1);
    expect(cancelRequests.map((r) => r.messageId)).toEqual(["a1"]);
  });

  it("cancels the generation and the call when the user presses Stop mid-answer", async () => {
    let cancelled = false;
    const { gateway, cancelRequests } = scriptedGateway([
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
    expect(cancelRequests.map((r) => r.messageId)).toEqual(["a1"]);
    await vi.waitFor(() => expect(cancelled).toBe(true)); // the server saw the cancel
  });

  it("a Stop before started waits for the answer's id, then cancels it", async () => {
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => (release = resolve));
    const { gateway, cancelRequests } = scriptedGateway([
      async function* (_request, context): AsyncIterable<Event> {
        await gate;
        yield started();
        await new Promise((resolve) => context.signal.addEventListener("abort", resolve));
      },
    ]);
    const controller = new AbortController();
    const { promise, updates } = run(gateway, controller);
    await vi.waitFor(() => expect(updates.length).toBeGreaterThan(0));
    controller.abort();
    release();
    const turn = await promise;
    expect(turn.state).toBe("interrupted");
    expect(cancelRequests.map((r) => r.messageId)).toEqual(["a1"]);
  });
});
