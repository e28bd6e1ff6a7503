import { HandoffMode, type HandoffStatus } from "@gen/chatplane/v1/resources_pb";

/** Who answers this conversation, and the button to change it (docs/handoff.md). */
export function HandoffBar(props: {
  status: HandoffStatus | null;
  disabled: boolean;
  onRequest: () => void;
  onRelease: () => void;
}) {
  const human = props.status?.mode === HandoffMode.HUMAN;
  return (
    <div
      className={`handoff ${human ? "human" : "bot"}`}
      role="status"
      data-testid="handoff"
      data-mode={human ? "human" : "bot"}
    >
      {human ? (
        <>
          <span>A person from support has this conversation; the bot is paused.</span>
          <button type="button" data-testid="release-handoff" disabled={props.disabled} onClick={props.onRelease}>
            Back to the bot
          </button>
        </>
      ) : (
        <button type="button" className="link" data-testid="request-handoff" disabled={props.disabled} onClick={props.onRequest}>
          Talk to a person
        </button>
      )}
    </div>
  );
}
