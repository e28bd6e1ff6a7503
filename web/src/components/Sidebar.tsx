import type { Conversation } from "@gen/chatplane/v1/resources_pb";

/** New chat, the caller's conversations (newest first) and sign-out. */
export function Sidebar(props: {
  conversations: Conversation[];
  currentId: string;
  busy: boolean;
  onOpen: (conversationId: string) => void;
  onNew: () => void;
  onDocuments: () => void;
  documentsOpen: boolean;
  onSignOut: () => void;
}) {
  return (
    <nav className="sidebar" aria-label="Conversations">
      <button type="button" data-testid="new-chat" disabled={props.busy} onClick={props.onNew}>
        + New chat
      </button>
      <ul data-testid="conversations">
        {props.conversations.map((conversation) => (
          <li key={conversation.conversationId}>
            <button
              type="button"
              className={conversation.conversationId === props.currentId ? "current" : ""}
              data-testid="conversation"
              data-conversation-id={conversation.conversationId}
              disabled={props.busy}
              title={props.busy ? "Wait for the answer to finish (or stop it)" : conversation.title}
              onClick={() => props.onOpen(conversation.conversationId)}
            >
              {conversation.title || "Untitled"}
              <span className="muted"> · {conversation.messageCount}</span>
            </button>
          </li>
        ))}
      </ul>
      <button
        type="button"
        data-testid="open-documents"
        aria-pressed={props.documentsOpen}
        disabled={props.busy}
        onClick={props.onDocuments}
      >
        Documents
      </button>
      <button type="button" className="link" data-testid="sign-out" onClick={props.onSignOut}>
        Sign out
      </button>
    </nav>
  );
}
