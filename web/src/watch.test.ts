import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { WatchConversationRequest, WatchConversationResponseSchema } from "@gen/chatplane/v1/gateway_pb";
import { HandoffMode, Role, type HandoffStatus, type Message } from "@gen/chatplane/v1/resources_pb";
import { describe, expect, it, vi } from "vitest";
import { fakeGateway } from "./testing/fakeGateway";
import type { Problem } from "./problems";
import { watchConversation } from "./watch";

type Event = MessageInitShape<typeof WatchConversationResponseSchema>;

const human: Event = { event: { case: "handoff", value: { conversationId: "c1", mode: HandoffMode.HUMAN } } };
const bot: Event = { event: { case: "handoff", value: { conversationId: "c1", mode: HandoffMode.BOT } } };
const reply = (id: string): Event => ({
  event: { case: "operatorReply", value: { messageId: id, role: Role.OPERATOR, text: `reply ${id}` } },
});

function scripted(attempts: ((context: HandlerContext) => AsyncIterable<Event>)[]) {
  const requests: WatchConversationRequest[] = [];
  const gateway = fakeGateway({
    watchConversation(request: WatchConversationRequest, context: HandlerContext) {
      requests.push(request);
      const attempt = attempts[Math.min(requests.length, attempts.length) - 1]!;
      return attempt(context);
    },
  });
  return { gateway, requests };
}

function watch(gateway: ReturnType<typeof scripted>["gateway"]) {
  const controller = new AbortController();
  const states: HandoffMode[] = [];
  const replies: Message[] = [];
  const problems: Problem[] = [];
  const done = watchConversation(gateway, "c1", controller.signal, {
    onHandoff: (status: HandoffStatus) => states.push(status.mode),
    onReply: (message) => replies.push(message),
    onProblem: (problem) => problems.push(problem),
  });
  return { controller, states, replies, problems, done };
}

async function* thenFail(error: ConnectError, ...list: Event[]): AsyncIterable<Event> {
  yield* list;
  throw error;
}

async function* forever(context: HandlerContext, ...list: Event[]): AsyncIterable<Event> {
  yield* list;
  await new Promise((resolve) => context.signal.addEventListener("abort", resolve));
}

describe("watchConversation", () => {
  it("delivers the state and the replies, and reopens the stream after a drop", async () => {
    const { gateway, requests } = scripted([
      () => thenFail(new ConnectError("gone", Code.Unavailable), human, reply("r1")),
      (context) => forever(context, human, reply("r2"), bot),
    ]);
    const run = watch(gateway);
    await vi.waitFor(() => expect(run.states).toEqual([HandoffMode.HUMAN, HandoffMode.HUMAN, HandoffMode.BOT]), {
      timeout: 3000,
    });
    expect(run.replies.map((m) => m.messageId)).toEqual(["r1", "r2"]);
    expect(requests.map((r) => r.conversationId)).toEqual(["c1", "c1"]);
    run.controller.abort();
    await run.done;
    expect(run.problems).toEqual([]);
  });

  it("ends on a failure that reopening cannot fix", async () => {
    const { gateway, requests } = scripted([() => thenFail(new ConnectError("no", Code.Unauthenticated))]);
    const run = watch(gateway);
    await run.done;
    expect(requests).toHaveLength(1);
    expect(run.problems.map((p) => p.kind)).toEqual(["unauthenticated"]);
  });

  it("stops when the conversation is left", async () => {
    let closed = false;
    const { gateway } = scripted([
      async function* (context): AsyncIterable<Event> {
        yield human;
        await new Promise((resolve) => context.signal.addEventListener("abort", resolve));
        closed = true;
      },
    ]);
    const run = watch(gateway);
    await vi.waitFor(() => expect(run.states).toHaveLength(1));
    run.controller.abort();
    await run.done;
    await vi.waitFor(() => expect(closed).toBe(true));
  });
});
