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
      <button
        type="button"
        className={chosen(Rating.THUMBS_UP)}
        aria-label="Good answer"
        aria-pressed={rating === Rating.THUMBS_UP}
        data-testid="thumbs-up"
        disabled={status === "saving"}
        onClick={() => void rate(Rating.THUMBS_UP)}
      >
        <Thumb />
      </button>
      <button
        type="button"
        className={chosen(Rating.THUMBS_DOWN)}
        aria-label="Bad answer"
        aria-pressed={rating === Rating.THUMBS_DOWN}
        data-testid="thumbs-down"
        disabled={status === "saving"}
        onClick={() => void rate(Rating.THUMBS_DOWN)}
      >
        <Thumb down />
      </button>
      {status === "saved" && <span className="muted">Thanks for the feedback.</span>}
      {status === "error" && <span className="error">{error}</span>}
    </div>
  );
}
