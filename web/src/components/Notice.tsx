import { useEffect, useState } from "react";
import type { Problem } from "../problems";

/** A problem banner; a rate limit counts down to the moment a request is allowed again. */
export function Notice(props: { problem: Problem | null; until: number | null; onDismiss: () => void }) {
  // Re-rendered four times a second while counting down.
  const [, setTick] = useState(0);
  useEffect(() => {
    if (props.until === null) return;
    const timer = setInterval(() => setTick((tick) => tick + 1), 250);
    return () => clearInterval(timer);
  }, [props.until]);
  const now = Date.now();
  if (props.problem === null) return null;
  let text = props.problem.message;
  if (props.problem.kind === "rate-limited" && props.until !== null) {
    const left = Math.ceil((props.until - now) / 1000);
    text = left > 0 ? `Too many requests. Try again in ${left} s.` : "You can send again now.";
  }
  return (
    <div className={`notice ${props.problem.kind}`} role="alert" data-testid="notice" data-kind={props.problem.kind}>
      <span data-testid="notice-text">{text}</span>
      <button type="button" className="link" aria-label="Dismiss" onClick={props.onDismiss}>
        ×
      </button>
    </div>
  );
}
