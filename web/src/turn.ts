// One chat turn as the page sees it: the user's text, the streamed answer and its state.
// `runTurn` asks for a resumable answer: once `started` named the answer, a dropped stream is
// continued with ResumeChat after the last delta received (the generation goes on meanwhile);
// before that, the Chat call is retried with the SAME idempotency key (client_message_id), so
// the Gateway waits for the copy already running or replays it. The answer is generated once.
import type { ChatResponse } from "@gen/chatplane/v1/gateway_pb";
import { FinishReason } from "@gen/chatplane/v1/resources_pb";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Gateway } from "./gateway";
import { online, sleep } from "./wait";
import { describeProblem, isTransient, type Problem } from "./problems";

export type TurnState =
  | "sending" // waiting for `started`
  | "streaming" // deltas arriving
  | "reconnecting" // the connection dropped; retrying with the same key
  | "done" // `done` arrived: the answer is stored
  | "interrupted" // stopped by the user, or stored cut short
  | "failed"; // not retried (or gave up): `problem` says why

export interface SourceView {
  kind: "turn" | "document" | "unknown";
  sourceId: string;
  title: string;
  snippet: string;
  score: number;
  /** Document citations: the document and the passage's position in it (from 0). */
  documentId: string;
  chunkIndex: number;
}

/** A turn that answers or rewrites an earlier user message (docs/conversation-tree.md). */
export type BranchAction =
  | { kind: "regenerate"; userMessageId: string }
  | { kind: "edit"; userMessageId: string };

export interface TurnView {
  clientMessageId: string;
  question: string;
  /** Set for a regenerate (question = the earlier text, not sent) or an edit. */
  branch: BranchAction | null;
  conversationId: string;
  userMessageId: string;
  assistantMessageId: string;
  model: string;
  replayed: boolean;
  /** Part of the answer came from ResumeChat after a drop. */
  resumed: boolean;
  /** ResumeChat calls made. */
  resumes: number;
  memoryDegraded: boolean;
  answer: string;
  deltaCount: number;
  lastSequence: number;
  citations: SourceView[];
  usage: { inputTokens: number; outputTokens: number } | null;
  finishReason: FinishReason;
  state: TurnState;
  problem: Problem | null;
  attempts: number;
  /** Events received over all attempts, by kind (what the page rendered). */
  events: Record<"started" | "delta" | "citation" | "usage" | "done", number>;
}

export function newTurn(question: string, conversationId: string, branch: BranchAction | null = null): TurnView {
  return {
    clientMessageId: crypto.randomUUID(),
    question,
    branch,
    conversationId,
    userMessageId: "",
    assistantMessageId: "",
    model: "",
    replayed: false,
    resumed: false,
    resumes: 0,
    memoryDegraded: false,
    answer: "",
    deltaCount: 0,
    lastSequence: 0,
    citations: [],
    usage: null,
    finishReason: FinishReason.UNSPECIFIED,
    state: "sending",
    problem: null,
    attempts: 0,
    events: { started: 0, delta: 0, citation: 0, usage: 0, done: 0 },
  };
}

/** Reconnect delays in seconds: quick at first, then every 5 s, for about a minute. */
const RECONNECT_DELAYS = [0.25, 0.5, 1, 2, 3, 5, 5, 5, 5, 5, 5, 5, 5, 5];

const KINDS: Record<number, SourceView["kind"]> = { 1: "turn", 2: "document" };

/** The ChatRequest of a turn: resumable, with its branch action if any. */
function chatRequest(turn: TurnView) {
  const branch =
    turn.branch === null
      ? { case: undefined }
      : turn.branch.kind === "regenerate"
        ? { case: "regenerateMessageId" as const, value: turn.branch.userMessageId }
        : { case: "editMessageId" as const, value: turn.branch.userMessageId };
  return {
    conversationId: turn.conversationId,
    // A regenerate answers the stored question again; its text must be empty.
    text: turn.branch?.kind === "regenerate" ? "" : turn.question,
    clientMessageId: turn.clientMessageId,
    resumable: true,
    branch,
  };
}

// How long Stop waits for CancelChat before it ends the turn on the page anyway.
const CANCEL_TIMEOUT_MS = 5000;

/**
 * Streams the turn until `done`, a final error, or `signal` (the stop button). `update` gets a
 * fresh copy of the turn after every event. Resolves with the last state.
 *
 * Stop: the answer is resumable, so closing the stream alone would not stop it; Stop asks
 * CancelChat to stop the generation (the partial answer is stored) and closes the stream. A
 * Stop before `started` (no id to cancel by yet) waits for `started`, then does the same.
 */
export async function runTurn(
  gateway: Gateway,
  initial: TurnView,
  signal: AbortSignal,
  update: (turn: TurnView) => void,
): Promise<TurnView> {
  let turn: TurnView = { ...initial, state: "sending", problem: null };
  const publish = (changes: Partial<TurnView>): void => {
    turn = { ...turn, ...changes };
    update(turn);
  };
  const stopped = (): TurnView => {
    publish({
      state: "interrupted",
      finishReason: FinishReason.INTERRUPTED,
      problem: { kind: "cancelled", message: "Stopped." },
    });
    return turn;
  };
  // The call of the current attempt; Stop closes it once the generation was asked to stop.
  let call: AbortController | null = null;
  let cancelling: Promise<unknown> = Promise.resolve();
  let stopWhenStarted = false;
  const cancelGeneration = (): void => {
    cancelling = gateway
      .cancelChat({ messageId: turn.assistantMessageId }, { timeoutMs: CANCEL_TIMEOUT_MS })
      .catch(() => undefined); // unreachable: the turn's deadline ends the generation
    call?.abort();
  };
  const onStop = (): void => {
    if (turn.assistantMessageId !== "") cancelGeneration();
    else if (call !== null) stopWhenStarted = true;
  };
  signal.addEventListener("abort", onStop, { once: true });
  try {
    publish({});
    for (let retry = 0; ; retry++) {
      let problem: Problem;
      const resuming = turn.assistantMessageId !== "";
      // A replay (one delta with the whole text) has other sequence numbers than the
      // generation: resume it from the start.
      const afterSequence = resuming && !turn.replayed ? turn.lastSequence : 0;
      call = new AbortController();
      try {
        turn = { ...turn, attempts: turn.attempts + 1, resumes: turn.resumes + (resuming ? 1 : 0) };
        const events: AsyncIterable<{ event: ChatResponse["event"] }> = resuming
          ? gateway.resumeChat(
              { messageId: turn.assistantMessageId, afterSequence: BigInt(afterSequence) },
              { signal: call.signal },
            )
          : gateway.chat(chatRequest(turn), { signal: call.signal });
        for await (const { event } of events) {
          const kind = event.case as keyof TurnView["events"] | undefined;
          const counts =
            kind === undefined || !(kind in turn.events)
              ? turn.events
              : { ...turn.events, [kind]: turn.events[kind] + 1 };
          switch (event.case) {
            case "started":
              if (event.value.resumed && afterSequence > 0) {
                // The rest of the answer follows: keep what was received.
                publish({ events: counts, state: "streaming", resumed: true });
              } else {
                // Chat (first attempt, or a replay) and a resume from 0 start the answer over.
                publish({
                  events: counts,
                  state: "streaming",
                  conversationId: event.value.conversationId,
                  userMessageId: event.value.userMessageId,
                  assistantMessageId: event.value.assistantMessageId,
                  model: event.value.model,
                  replayed: event.value.replayed,
                  resumed: turn.resumed || event.value.resumed,
                  memoryDegraded: event.value.memoryDegraded,
                  answer: "",
                  deltaCount: 0,
                  lastSequence: 0,
                  citations: [],
                });
              }
              if (stopWhenStarted) cancelGeneration();
              break;
            case "citation":
              publish({
                events: counts,
                citations: [
                  ...turn.citations,
                  {
                    kind: KINDS[event.value.kind] ?? "unknown",
                    sourceId: event.value.sourceId,
                    title: event.value.title,
                    snippet: event.value.snippet,
                    score: event.value.score,
                    documentId: event.value.documentId,
                    chunkIndex: event.value.chunkIndex,
                  },
                ],
              });
              break;
            case "delta":
              if (Number(event.value.sequence) <= turn.lastSequence) break; // had it already
              publish({
                events: counts,
                state: "streaming",
                answer: turn.answer + event.value.text,
                deltaCount: turn.deltaCount + 1,
                lastSequence: Number(event.value.sequence),
              });
              break;
            case "usage":
              publish({
                events: counts,
                usage: {
                  inputTokens: event.value.inputTokens,
                  outputTokens: event.value.outputTokens,
                },
              });
              break;
            case "done":
              publish({
                events: counts,
                finishReason: event.value.finishReason,
                model: event.value.model || turn.model,
                state: event.value.finishReason === FinishReason.INTERRUPTED ? "interrupted" : "done",
              });
              return turn;
            case "handoff":
              // A person has the conversation (docs/handoff.md): the message is stored, the
              // bot does not answer, and no `done` follows.
              publish({
                events: counts,
                conversationId: event.value.conversationId || turn.conversationId,
                answer: "This conversation is with a person now; they will reply.",
                state: "done",
              });
              return turn;
            default:
              break; // an event kind newer than this page: ignored
          }
        }
        // The stream ended without `done`: the turn did not complete on this connection.
        problem = { kind: "network", message: "The answer was cut off." };
      } catch (reason) {
        if (signal.aborted) {
          await cancelling;
          return stopped();
        }
        if (resuming && ConnectError.from(reason).code === Code.NotFound) {
          // Its generation failed before the first token, and nothing was stored: the
          // Gateway released the turn, so the same key asks for it again.
          publish({ assistantMessageId: "", userMessageId: "", replayed: false, lastSequence: 0, answer: "" });
          continue;
        }
        problem = describeProblem(reason);
      }
      // After a drop, a rate limit only delays the reconnect; the turn is still the same.
      const reconnecting = retry > 0 || turn.state === "streaming" || turn.state === "reconnecting";
      const delay =
        problem.kind === "rate-limited" && reconnecting
          ? (problem.retryAfterSeconds ?? 5)
          : RECONNECT_DELAYS[retry];
      if ((!isTransient(problem) && !(problem.kind === "rate-limited" && reconnecting)) || delay === undefined) {
        publish({ state: "failed", problem });
        return turn;
      }
      publish({ state: "reconnecting", problem });
      call = null;
      await sleep(delay, signal);
      await online(signal); // time offline uses up no attempts
      if (signal.aborted) {
        await cancelling;
        return stopped();
      }
    }
  } finally {
    signal.removeEventListener("abort", onStop);
  }
}
