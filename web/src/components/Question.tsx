import { useState, type FormEvent, type KeyboardEvent } from "react";
import { Siblings } from "./Siblings";

/** The user's message: its text, "Edit" (a new version beside it) and its versions. */
export function Question(props: {
  text: string;
  messageId: string;
  siblingIndex?: number;
  siblingIds?: string[];
  /** Absent while editing is not possible (an answer streams, or it is not stored yet). */
  onEdit?: (text: string) => void;
  onSwitch: (messageId: string) => void;
  disabled: boolean;
}) {
  const [editing, setEditing] = useState(false);
  const [draft, setDraft] = useState(props.text);

  function submit(event?: FormEvent): void {
    event?.preventDefault();
    const text = draft.trim();
    if (!text || !props.onEdit) return;
    setEditing(false);
    props.onEdit(text);
  }

  function onKeyDown(event: KeyboardEvent<HTMLTextAreaElement>): void {
    if (event.key === "Enter" && !event.shiftKey) submit(event);
    if (event.key === "Escape") setEditing(false);
  }

  if (editing) {
    return (
      <form className="message user editing" data-testid="edit-form" onSubmit={submit}>
        <textarea
          data-testid="edit-text"
          aria-label="Edit your message"
          rows={2}
          value={draft}
          autoFocus
          onChange={(e) => setDraft(e.target.value)}
          onKeyDown={onKeyDown}
        />
        <div className="actions">
          <button type="submit" data-testid="edit-send" disabled={!draft.trim() || props.disabled}>
            Send
          </button>
          <button type="button" data-testid="edit-cancel" onClick={() => setEditing(false)}>
            Cancel
          </button>
        </div>
      </form>
    );
  }
  return (
    <div className="message user" data-testid="question" data-message-id={props.messageId}>
      <div className="text">{props.text}</div>
      {(props.onEdit || (props.siblingIds?.length ?? 0) > 1) && (
        <div className="actions">
          <Siblings
            what="question"
            index={props.siblingIndex ?? 0}
            ids={props.siblingIds ?? []}
            disabled={props.disabled}
            onSwitch={props.onSwitch}
          />
          {props.onEdit && (
            <button
              type="button"
              className="link"
              data-testid="edit"
              aria-label="Edit this message"
              disabled={props.disabled}
              onClick={() => {
                setDraft(props.text);
                setEditing(true);
              }}
            >
              Edit
            </button>
          )}
        </div>
      )}
    </div>
  );
}
