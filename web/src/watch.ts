// The open WatchConversation stream of the conversation on screen (docs/handoff.md): its
// handoff state (bot or a person) and the operators' replies, live. The stream is reopened
// after a drop or when Envoy's idle timeout ends it; the server sends the current state
// first, and every reply is also stored, so nothing is lost in between.
import type { HandoffStatus, Message } from "@gen/chatplane/v1/resources_pb";
import type { Gateway } from "./gateway";
import { describeProblem, isTransient, type Problem } from "./problems";
import { online, sleep } from "./wait";

/** Seconds before reopening the stream, by consecutive failures (then the last, repeated). */
export const WATCH_DELAYS = [0.5, 1, 2, 5, 10, 30];

export interface WatchHandlers {
  onHandoff: (status: HandoffStatus) => void;
  onReply: (message: Message) => void;
  /** A failure that reopening cannot fix (401, the conversation is gone): the watch ends. */
  onProblem: (problem: Problem) => void;
}

/** Watches `conversationId` until `signal` is aborted or a final error. */
export async function watchConversation(
  gateway: Gateway,
  conversationId: string,
  signal: AbortSignal,
  handlers: WatchHandlers,
): Promise<void> {
  let failures = 0;
  while (!signal.aborted) {
    try {
      for await (const { event } of gateway.watchConversation({ conversationId }, { signal })) {
        failures = 0;
        if (event.case === "handoff") handlers.onHandoff(event.value);
        else if (event.case === "operatorReply") handlers.onReply(event.value);
      }
      // Ended by the server or the edge (idle timeout): reopen, after a short pause.
      await sleep(WATCH_DELAYS[0]!, signal);
    } catch (reason) {
      if (signal.aborted) return;
      const problem = describeProblem(reason);
      if (!isTransient(problem) && problem.kind !== "rate-limited") {
        handlers.onProblem(problem);
        return;
      }
      const delay =
        problem.kind === "rate-limited" && problem.retryAfterSeconds !== null
          ? problem.retryAfterSeconds
          : WATCH_DELAYS[Math.min(failures, WATCH_DELAYS.length - 1)]!;
      failures++;
      await sleep(delay, signal);
      await online(signal);
    }
  }
}
