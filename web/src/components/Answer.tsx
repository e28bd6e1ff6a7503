import { useMemo } from "react";
import type { Gateway } from "../gateway";
import { renderMarkdown } from "../markdown";
import type { Problem } from "../problems";
import type { SourceView, TurnState } from "../turn";
import { Feedback } from "./Feedback";
import { Siblings } from "./Siblings";

const STATE_LABELS: Partial<Record<TurnState, string>> = {
  sending: "Thinking…",
  reconnecting: "Connection lost, reconnecting…",
  interrupted: "Interrupted",
};

/** The assistant's answer: markdown, its state, the sources memory recalled, and feedback. */
export function Answer(props: {
  gateway: Gateway;
  text: string;
  state: TurnState;
  messageId: string;
  model: string;
  citations: SourceView[];
  problem: Problem | null;
  replayed?: boolean;
  resumed?: boolean;
  resumes?: number;
  memoryDegraded?: boolean;
  deltaCount?: number;
  lastSequence?: number;
  events?: Record<string, number>;
  siblingIndex?: number;
  siblingIds?: string[];
  onRetry?: () => void;
  onAskAgain?: () => void;
  /** Absent while regenerating is not possible (an answer streams, or it is not stored). */
  onRegenerate?: () => void;
  onSwitch?: (messageId: string) => void;
  onOpenSource?: (source: SourceView) => void;
  busy?: boolean;
  onProblem: (problem: Problem) => void;
}) {
  const html = useMemo(() => renderMarkdown(props.text), [props.text]);
  const label = STATE_LABELS[props.state];
  const rateable = (props.state === "done" || props.state === "interrupted") && props.messageId !== "";
  return (
    <article
      className={`message assistant ${props.state}`}
      data-testid="answer"
      data-state={props.state}
      data-message-id={props.messageId}
      data-delta-count={props.deltaCount ?? ""}
      data-last-sequence={props.lastSequence ?? ""}
      data-citation-count={props.citations.length}
      data-replayed={props.replayed ? "true" : "false"}
      data-resumed={props.resumed ? "true" : "false"}
      data-resumes={props.resumes ?? 0}
      aria-label="Answer"
      aria-busy={props.state === "sending" || props.state === "streaming" || props.state === "reconnecting"}
      data-events={props.events ? JSON.stringify(props.events) : ""}
    >
      {props.text !== "" && (
        <div className="markdown" data-testid="answer-text" dangerouslySetInnerHTML={{ __html: html }} />
      )}
      {label && (
        <p className="state" data-testid="answer-state">
          {props.state === "interrupted" && props.problem?.kind === "cancelled" ? "Stopped" : label}
          {props.state === "reconnecting" && props.problem && (
            <span className="muted"> ({props.problem.message})</span>
          )}
          {props.state === "interrupted" && props.onAskAgain && (
            <>
              {" "}
              <button type="button" className="link" data-testid="ask-again" onClick={props.onAskAgain}>
                Ask again
              </button>
            </>
          )}
        </p>
      )}
      {props.state === "interrupted" && props.replayed && (
        <p className="muted" data-testid="recovered-note">
          The connection dropped while the answer was being written; this is the part that was
          saved.
        </p>
      )}
      {props.state === "failed" && props.problem && (
        <p className="error" role="alert" data-testid="answer-error">
          {props.messageId === "" && "Not sent: "}
          {props.problem.message}
          {props.onRetry && props.problem.kind !== "unauthenticated" && (
            <>
              {" "}
              <button type="button" className="link" data-testid="retry" onClick={props.onRetry}>
                Try again
              </button>
            </>
          )}
        </p>
      )}
      {props.memoryDegraded && (
        <p className="muted">Memory was unavailable; this answer does not use earlier conversations.</p>
      )}
      {props.citations.length > 0 && (
        <details className="sources" data-testid="citations">
          <summary>Sources ({props.citations.length})</summary>
          <ol>
            {props.citations.map((source) => (
              <li key={`${source.kind}:${source.sourceId}`} data-testid="citation" data-source-id={source.sourceId}>
                <strong>{source.title || (source.kind === "document" ? "Document" : "Earlier conversation")}</strong>{" "}
                <span className="muted">
                  {source.kind === "document" ? "document" : "earlier turn"} · score {source.score.toFixed(2)}
                </span>
                <blockquote>{source.snippet}</blockquote>
                {source.kind === "document" && props.onOpenSource && (
                  <button
                    type="button"
                    className="link"
                    data-testid="open-source"
                    aria-label={`Open the cited passage of ${source.title || "the document"}`}
                    onClick={() => props.onOpenSource?.(source)}
                  >
                    Open passage
                  </button>
                )}
              </li>
            ))}
          </ol>
        </details>
      )}
      <footer>
        {props.model && <span className="muted">{props.model}</span>}
        {props.replayed && <span className="muted"> · recovered</span>}
        {props.resumed && (
          <span className="muted" data-testid="resumed-note">
            {" "}
            · resumed after the connection dropped
          </span>
        )}
        {props.onSwitch && (
          <Siblings
            what="answer"
            index={props.siblingIndex ?? 0}
            ids={props.siblingIds ?? []}
            disabled={props.busy ?? false}
            onSwitch={props.onSwitch}
          />
        )}
        {props.onRegenerate && (
          <button
            type="button"
            className="link"
            data-testid="regenerate"
            aria-label="Regenerate this answer"
            disabled={props.busy}
            onClick={props.onRegenerate}
          >
            Regenerate
          </button>
        )}
        {rateable && <Feedback gateway={props.gateway} messageId={props.messageId} onProblem={props.onProblem} />}
      </footer>
    </article>
  );
}
