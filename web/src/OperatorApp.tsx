// The operator page (/operator): conversations waiting for a person, the conversation so far,
// replies into the user's conversation (the user's watch stream shows them), and release back
// to the bot. OperatorService, with a key that has the `operator` role (docs/handoff.md).
import { useCallback, useEffect, useMemo, useState, type FormEvent, type KeyboardEvent } from "react";
import { Code, ConnectError } from "@connectrpc/connect";
import { HandoffMode, Role, type HandoffStatus, type Message } from "@gen/chatplane/v1/resources_pb";
import { SignIn } from "./components/SignIn";
import { operatorClient, type Operator } from "./gateway";
import { renderMarkdown } from "./markdown";
import { describeProblem } from "./problems";
import { forgetApiKey, storeApiKey, storedApiKey } from "./session";

// How often the list and the open conversation are read again (there is no operator stream).
const POLL_MS = 2000;
const HISTORY_PAGES = 5;

function refusal(reason: unknown): string {
  if (ConnectError.from(reason).code === Code.PermissionDenied) {
    return "This API key has no operator role.";
  }
  return describeProblem(reason).message;
}

/** Signed out: the sign-in form (checked with ListWaitingConversations). Signed in: the console. */
export function OperatorApp() {
  const [apiKey, setApiKey] = useState<string | null>(() => storedApiKey("operator"));
  const [notice, setNotice] = useState<string | null>(null);
  const signOut = useCallback((why: string | null) => {
    forgetApiKey("operator");
    setNotice(why);
    setApiKey(null);
  }, []);
  if (apiKey === null) {
    return (
      <SignIn
        heading="chatplane · operators"
        notice={notice}
        check={async (key) => {
          await operatorClient(key).listWaitingConversations({ pageSize: 1 });
        }}
        describe={refusal}
        onSignedIn={(key) => {
          storeApiKey(key, "operator");
          setNotice(null);
          setApiKey(key);
        }}
      />
    );
  }
  return <Console key={apiKey} apiKey={apiKey} onSignOut={signOut} />;
}

function waitingFor(status: HandoffStatus): string {
  const since = status.requestTime ? Number(status.requestTime.seconds) * 1000 : Date.now();
  const minutes = Math.max(0, Math.round((Date.now() - since) / 60000));
  return minutes < 1 ? "just now" : `${minutes} min`;
}

function Console(props: { apiKey: string; onSignOut: (why: string | null) => void }) {
  const { onSignOut } = props;
  const operator = useMemo(() => operatorClient(props.apiKey), [props.apiKey]);
  const [waiting, setWaiting] = useState<HandoffStatus[]>([]);
  const [selected, setSelected] = useState("");
  const [status, setStatus] = useState<HandoffStatus | null>(null);
  const [messages, setMessages] = useState<Message[]>([]);
  const [draft, setDraft] = useState("");
  const [sending, setSending] = useState(false);
  const [error, setError] = useState<string | null>(null);

  const fail = useCallback(
    (reason: unknown) => {
      const code = ConnectError.from(reason).code;
      if (code === Code.Unauthenticated || code === Code.PermissionDenied) {
        onSignOut(refusal(reason));
        return;
      }
      setError(describeProblem(reason).message);
    },
    [onSignOut],
  );

  const refreshList = useCallback(async () => {
    try {
      const response = await operator.listWaitingConversations({ pageSize: 100 });
      setWaiting(response.handoffs);
    } catch (reason) {
      fail(reason);
    }
  }, [operator, fail]);

  const refreshConversation = useCallback(
    async (conversationId: string) => {
      try {
        const read = await readConversation(operator, conversationId);
        setStatus(read.status);
        setMessages(read.messages);
      } catch (reason) {
        fail(reason);
      }
    },
    [operator, fail],
  );

  useEffect(() => {
    void refreshList();
    const timer = setInterval(() => void refreshList(), POLL_MS);
    return () => clearInterval(timer);
  }, [refreshList]);

  useEffect(() => {
    if (!selected) return;
    void refreshConversation(selected);
    const timer = setInterval(() => void refreshConversation(selected), POLL_MS);
    return () => clearInterval(timer);
  }, [selected, refreshConversation]);

  function open(conversationId: string): void {
    setSelected(conversationId);
    setStatus(null);
    setMessages([]);
    setDraft("");
    setError(null);
  }

  async function reply(event?: FormEvent): Promise<void> {
    event?.preventDefault();
    const text = draft.trim();
    if (!text || sending || !selected) return;
    setSending(true);
    try {
      const response = await operator.postReply({ conversationId: selected, text });
      const stored = response.message;
      if (stored) setMessages((all) => (all.some((m) => m.messageId === stored.messageId) ? all : [...all, stored]));
      setDraft("");
      setError(null);
    } catch (reason) {
      fail(reason);
    } finally {
      setSending(false);
    }
  }

  async function release(): Promise<void> {
    try {
      const response = await operator.releaseConversation({ conversationId: selected });
      if (response.handoff) setStatus(response.handoff);
      await refreshList();
    } catch (reason) {
      fail(reason);
    }
  }

  function onKeyDown(event: KeyboardEvent<HTMLTextAreaElement>): void {
    if (event.key === "Enter" && !event.shiftKey) void reply(event);
  }

  const human = status?.mode === HandoffMode.HUMAN;
  return (
    <div className="layout operator-console">
      <nav className="sidebar" aria-label="Conversations waiting for a person">
        <h1 className="sidebar-title">Waiting for a person</h1>
        {waiting.length === 0 && <p className="muted" data-testid="waiting-empty">Nobody is waiting.</p>}
        <ul data-testid="waiting">
          {waiting.map((handoff) => (
            <li key={handoff.conversationId}>
              <button
                type="button"
                className={handoff.conversationId === selected ? "current" : ""}
                aria-current={handoff.conversationId === selected ? "true" : undefined}
                data-testid="waiting-conversation"
                data-conversation-id={handoff.conversationId}
                onClick={() => open(handoff.conversationId)}
              >
                {handoff.userId}
                <span className="muted">
                  {" "}
                  · {waitingFor(handoff)}
                  {handoff.reason ? ` · ${handoff.reason}` : ""}
                </span>
              </button>
            </li>
          ))}
        </ul>
        <button type="button" className="link" data-testid="sign-out" onClick={() => onSignOut(null)}>
          Sign out
        </button>
      </nav>
      <main className="chat" data-testid="operator-conversation" data-conversation-id={selected}>
        {error && (
          <div className="notice other" role="alert" data-testid="notice">
            <span data-testid="notice-text">{error}</span>
            <button type="button" className="link" aria-label="Dismiss" onClick={() => setError(null)}>
              ×
            </button>
          </div>
        )}
        {!selected ? (
          <p className="empty muted">Choose a conversation on the left.</p>
        ) : (
          <>
            <div className={`handoff ${human ? "human" : "bot"}`} role="status" data-testid="handoff" data-mode={human ? "human" : "bot"}>
              <span>
                {status?.userId ?? ""} ·{" "}
                {status === null ? "Loading…" : human ? "You have this conversation." : "The bot answers this conversation."}
              </span>
              {human && (
                <button type="button" data-testid="release" onClick={() => void release()}>
                  Give back to the bot
                </button>
              )}
            </div>
            <section className="messages" role="log" aria-label="Conversation" data-testid="messages">
              {messages.map((message) => (
                <ReadOnlyMessage key={message.messageId} message={message} />
              ))}
            </section>
            <form className="composer" onSubmit={(e) => void reply(e)}>
              <textarea
                data-testid="reply-text"
                aria-label="Reply to the user"
                placeholder={human ? "Reply to the user…" : "Given back to the bot"}
                rows={2}
                value={draft}
                disabled={!human}
                onChange={(e) => setDraft(e.target.value)}
                onKeyDown={onKeyDown}
              />
              <button type="submit" data-testid="reply-send" disabled={!human || sending || !draft.trim()}>
                Reply
              </button>
            </form>
          </>
        )}
      </main>
    </div>
  );
}

async function readConversation(
  operator: Operator,
  conversationId: string,
): Promise<{ status: HandoffStatus | null; messages: Message[] }> {
  const messages: Message[] = [];
  let status: HandoffStatus | null = null;
  let pageToken = "";
  for (let page = 0; page < HISTORY_PAGES; page++) {
    const response = await operator.getHandedOffConversation({ conversationId, pageSize: 100, pageToken });
    status = response.handoff ?? status;
    messages.push(...response.messages);
    pageToken = response.nextPageToken;
    if (!pageToken) break;
  }
  return { status, messages };
}

const AUTHORS: Record<number, string> = { [Role.USER]: "User", [Role.ASSISTANT]: "Bot", [Role.OPERATOR]: "Support" };

/** One message of the conversation as the operator reads it. */
function ReadOnlyMessage(props: { message: Message }) {
  const { message } = props;
  const kind = message.role === Role.USER ? "user" : message.role === Role.OPERATOR ? "operator" : "assistant";
  const html = useMemo(
    () => (message.role === Role.ASSISTANT ? renderMarkdown(message.text) : ""),
    [message.role, message.text],
  );
  return (
    <article className={`message ${kind}`} data-testid={`${kind}-message`} data-message-id={message.messageId}>
      <p className="author muted">{AUTHORS[message.role] ?? "?"}</p>
      {message.role === Role.ASSISTANT ? (
        <div className="markdown" dangerouslySetInnerHTML={{ __html: html }} />
      ) : (
        <div className="text">{message.text}</div>
      )}
    </article>
  );
}
