import { useState } from "react";
import { Code, ConnectError } from "@connectrpc/connect";
import { Rating } from "@gen/chatplane/v1/gateway_pb";
import type { Gateway } from "../gateway";
import { describeProblem, type Problem } from "../problems";
import { Thumb } from "./Thumb";

type Status = "idle" | "saving" | "saved" | "error";

// An answer is readable by SubmitFeedback a few tens of milliseconds after `done` (the
// Persistence batch window): NOT_FOUND right after the stream is retried for a short while.
const NOT_STORED_YET_RETRIES = [0.1, 0.2, 0.4, 0.8, 1.6];

// The two buttons, in order: what each rates, how a screen reader names it.
const THUMBS = [
  { value: Rating.THUMBS_UP, label: "Good answer", testId: "thumbs-up", down: false },
  { value: Rating.THUMBS_DOWN, label: "Bad answer", testId: "thumbs-down", down: true },
] as const;

/** Thumbs up / down on one assistant message. */
export function Feedback(props: {
  gateway: Gateway;
  messageId: string;
  onProblem: (problem: Problem) => void;
}) {
  const [rating, setRating] = useState<Rating>(Rating.UNSPECIFIED);
  const [status, setStatus] = useState<Status>("idle");
  const [error, setError] = useState<string | null>(null);

  async function rate(value: Rating): Promise<void> {
    setRating(value);
    setStatus("saving");
    setError(null);
    for (let attempt = 0; ; attempt++) {
      try {
        await props.gateway.submitFeedback({ messageId: props.messageId, rating: value });
        setStatus("saved");
        return;
      } catch (reason) {
        const delay = NOT_STORED_YET_RETRIES[attempt];
        if (ConnectError.from(reason).code === Code.NotFound && delay !== undefined) {
          await new Promise((resolve) => setTimeout(resolve, delay * 1000));
          continue;
        }
        const problem = describeProblem(reason);
        setStatus("error");
        setError(problem.message);
        props.onProblem(problem);
        return;
      }
    }
  }

  const chosen = (value: Rating): string => (rating === value ? "chosen" : "");
  return (
    <div
      className="feedback"
      data-testid="feedback"
      data-status={status}
      data-rating={rating === Rating.THUMBS_UP ? "up" : rating === Rating.THUMBS_DOWN ? "down" : ""}
    >
      {THUMBS.map(({ value, label, testId, down }) => (
        <button
          key={testId}
          type="button"
          className={chosen(value)}
          aria-label={label}
          aria-pressed={rating === value}
          data-testid={testId}
          disabled={status === "saving"}
          onClick={() => void rate(value)}
        >
          <Thumb down={down} />
        </button>
      ))}
      {status === "saved" && <span className="muted">Thanks for the feedback.</span>}
      {status === "error" && <span className="error">{error}</span>}
    </div>
  );
}
