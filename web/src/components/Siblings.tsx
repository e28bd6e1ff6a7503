/** "‹ 2 / 3 ›": the versions of a message (its siblings in the conversation tree). */
export function Siblings(props: {
  what: "question" | "answer";
  index: number;
  ids: string[];
  disabled: boolean;
  onSwitch: (messageId: string) => void;
}) {
  if (props.ids.length < 2) return null;
  const previous = props.ids[props.index - 1];
  const next = props.ids[props.index + 1];
  return (
    <span
      className="siblings"
      role="group"
      aria-label={`Versions of this ${props.what}`}
      data-testid="siblings"
      data-index={props.index + 1}
      data-count={props.ids.length}
    >
      <button
        type="button"
        className="link"
        aria-label={`Previous version of this ${props.what}`}
        data-testid="previous-version"
        disabled={props.disabled || previous === undefined}
        onClick={() => previous !== undefined && props.onSwitch(previous)}
      >
        ‹
      </button>
      <span aria-label={`Version ${props.index + 1} of ${props.ids.length}`}>
        {props.index + 1} / {props.ids.length}
      </span>
      <button
        type="button"
        className="link"
        aria-label={`Next version of this ${props.what}`}
        data-testid="next-version"
        disabled={props.disabled || next === undefined}
        onClick={() => next !== undefined && props.onSwitch(next)}
      >
        ›
      </button>
    </span>
  );
}
