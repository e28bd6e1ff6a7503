// One chat turn as the page sees it: the user's text, the streamed answer and its state.
// `runTurn` streams it and reconnects after a dropped connection with the SAME idempotency key
// (client_message_id), so the Gateway either replays the stored answer or waits for the copy
// still running; it never starts a second turn.
import { FinishReason } from "@gen/chatplane/v1/resources_pb";
import type { Gateway } from "./gateway";
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
}

export interface TurnView {
  clientMessageId: string;
  question: string;
  conversationId: string;
  userMessageId: string;
  assistantMessageId: string;
  model: string;
  replayed: boolean;
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

export function newTurn(question: string, conversationId: string): TurnView {
  return {
    clientMessageId: crypto.randomUUID(),
    question,
    conversationId,
    userMessageId: "",
    assistantMessageId: "",
    model: "",
    replayed: false,
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

function sleep(seconds: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, seconds * 1000);
    signal.addEventListener("abort", done, { once: true });
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}

/** While the browser says it is offline, waits for it to be online again (or for Stop). */
function online(signal: AbortSignal): Promise<void> {
  if (typeof window === "undefined" || navigator.onLine !== false) return Promise.resolve();
  return new Promise((resolve) => {
    window.addEventListener("online", done);
    signal.addEventListener("abort", done, { once: true });
    function done(): void {
      window.removeEventListener("online", done);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}

/**
 * Streams the turn until `done`, a final error, or `signal` (the stop button). `update` gets a
 * fresh copy of the turn after every event. Resolves with the last state.
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
  publish({});
  for (let retry = 0; ; retry++) {
    let problem: Problem;
    try {
      turn = { ...turn, attempts: turn.attempts + 1 };
      const events = gateway.chat(
        {
          conversationId: turn.conversationId,
          text: turn.question,
          clientMessageId: turn.clientMessageId,
        },
        { signal },
      );
      for await (const { event } of events) {
        const kind = event.case as keyof TurnView["events"] | undefined;
        const counts =
          kind === undefined || !(kind in turn.events)
            ? turn.events
            : { ...turn.events, [kind]: turn.events[kind] + 1 };
        switch (event.case) {
          case "started":
            // Every attempt starts the answer over: a replay carries the whole stored text.
            publish({
              events: counts,
              state: "streaming",
              conversationId: event.value.conversationId,
              userMessageId: event.value.userMessageId,
              assistantMessageId: event.value.assistantMessageId,
              model: event.value.model,
              replayed: event.value.replayed,
              memoryDegraded: event.value.memoryDegraded,
              answer: "",
              deltaCount: 0,
              lastSequence: 0,
              citations: [],
            });
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
                },
              ],
            });
            break;
          case "delta":
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
        return stopped();
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
    await sleep(delay, signal);
    await online(signal); // time offline uses up no attempts
    if (signal.aborted) {
      return stopped();
    }
  }
}
