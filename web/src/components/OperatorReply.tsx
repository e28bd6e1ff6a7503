import type { Message } from "@gen/chatplane/v1/resources_pb";

/** A reply written by a person (an operator), in the user's conversation. */
export function OperatorReply(props: { message: Message }) {
  return (
    <article
      className="message operator"
      data-testid="operator-reply"
      data-message-id={props.message.messageId}
      aria-label="Reply from a person"
    >
      <p className="author muted">Support (a person)</p>
      <div className="text">{props.message.text}</div>
    </article>
  );
}
