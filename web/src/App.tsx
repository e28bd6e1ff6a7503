import { useCallback, useEffect, useMemo, useRef, useState, type FormEvent, type KeyboardEvent } from "react";
import { MessageStatus, Role, type Conversation, type Message } from "@gen/chatplane/v1/resources_pb";
import { Answer } from "./components/Answer";
import { Notice } from "./components/Notice";
import { Sidebar } from "./components/Sidebar";
import { SignIn } from "./components/SignIn";
import { gatewayClient } from "./gateway";
import { describeProblem, type Problem } from "./problems";
import { forgetApiKey, storeApiKey, storedApiKey } from "./session";
import { newTurn, runTurn, type TurnView } from "./turn";

/** Signed out: the sign-in form. Signed in: the chat, bound to the key. */
export function App() {
  const [apiKey, setApiKey] = useState<string | null>(() => storedApiKey());
  const [notice, setNotice] = useState<string | null>(null);
  const signOut = useCallback((why: string | null) => {
    forgetApiKey();
    setNotice(why);
    setApiKey(null);
  }, []);
  if (apiKey === null) {
    return (
      <SignIn
        notice={notice}
        onSignedIn={(key) => {
          storeApiKey(key);
          setNotice(null);
          setApiKey(key);
        }}
      />
    );
  }
  return <Chat key={apiKey} apiKey={apiKey} onSignOut={signOut} />;
}

// GetConversation pages (100 messages each) read when a conversation is opened.
const HISTORY_PAGES = 5;

function Chat(props: { apiKey: string; onSignOut: (why: string | null) => void }) {
  const { onSignOut } = props;
  const gateway = useMemo(() => gatewayClient(props.apiKey), [props.apiKey]);
  const [conversations, setConversations] = useState<Conversation[]>([]);
  const [currentId, setCurrentId] = useState("");
  const [history, setHistory] = useState<Message[]>([]);
  const [turns, setTurns] = useState<TurnView[]>([]);
  const [problem, setProblem] = useState<Problem | null>(null);
  const [rateLimitedUntil, setRateLimitedUntil] = useState<number | null>(null);
  const [online, setOnline] = useState(() => navigator.onLine);
  const [draft, setDraft] = useState("");
  const [busy, setBusy] = useState(false);
  const stop = useRef<AbortController | null>(null);
  const end = useRef<HTMLDivElement | null>(null);

  const handleProblem = useCallback(
    (found: Problem) => {
      if (found.kind === "cancelled") return;
      if (found.kind === "unauthenticated") {
        stop.current?.abort();
        onSignOut(found.message);
        return;
      }
      if (found.kind === "rate-limited") {
        setRateLimitedUntil(Date.now() + (found.retryAfterSeconds ?? 5) * 1000);
      }
      setProblem(found);
    },
    [onSignOut],
  );

  const refreshConversations = useCallback(async () => {
    try {
      const response = await gateway.listConversations({ pageSize: 50 });
      setConversations(response.conversations);
    } catch (reason) {
      handleProblem(describeProblem(reason));
    }
  }, [gateway, handleProblem]);

  useEffect(() => {
    void refreshConversations();
  }, [refreshConversations]);

  useEffect(() => {
    const update = (): void => setOnline(navigator.onLine);
    window.addEventListener("online", update);
    window.addEventListener("offline", update);
    return () => {
      window.removeEventListener("online", update);
      window.removeEventListener("offline", update);
    };
  }, []);

  useEffect(() => {
    if (rateLimitedUntil === null) return;
    const timer = setTimeout(() => {
      setRateLimitedUntil(null);
      setProblem((current) => (current?.kind === "rate-limited" ? null : current));
    }, Math.max(0, rateLimitedUntil - Date.now()));
    return () => clearTimeout(timer);
  }, [rateLimitedUntil]);

  useEffect(() => {
    end.current?.scrollIntoView({ block: "end" });
  }, [turns, history]);

  async function open(conversationId: string): Promise<void> {
    try {
      const messages: Message[] = [];
      let pageToken = "";
      for (let page = 0; page < HISTORY_PAGES; page++) {
        const response = await gateway.getConversation({ conversationId, pageSize: 100, pageToken });
        messages.push(...response.messages);
        pageToken = response.nextPageToken;
        if (!pageToken) break;
      }
      setCurrentId(conversationId);
      setHistory(messages);
      setTurns([]);
      setProblem(null);
    } catch (reason) {
      handleProblem(describeProblem(reason));
    }
  }

  function startNew(): void {
    setCurrentId("");
    setHistory([]);
    setTurns([]);
    setProblem(null);
  }

  async function stream(turn: TurnView): Promise<void> {
    const controller = new AbortController();
    stop.current = controller;
    setBusy(true);
    setProblem(null);
    const upsert = (next: TurnView): void =>
      setTurns((all) =>
        all.some((t) => t.clientMessageId === next.clientMessageId)
          ? all.map((t) => (t.clientMessageId === next.clientMessageId ? next : t))
          : [...all, next],
      );
    const final = await runTurn(gateway, turn, controller.signal, upsert);
    stop.current = null;
    setBusy(false);
    if (final.conversationId) setCurrentId(final.conversationId);
    if (final.state === "failed" && final.problem) handleProblem(final.problem);
    void refreshConversations();
  }

  const rateLimited = rateLimitedUntil !== null;

  function send(event?: FormEvent): void {
    event?.preventDefault();
    const text = draft.trim();
    if (!text || busy || rateLimited) return;
    setDraft("");
    void stream(newTurn(text, currentId));
  }

  function onKeyDown(event: KeyboardEvent<HTMLTextAreaElement>): void {
    if (event.key === "Enter" && !event.shiftKey) send(event);
  }

  return (
    <div className="layout">
      <Sidebar
        conversations={conversations}
        currentId={currentId}
        busy={busy}
        onOpen={(id) => void open(id)}
        onNew={startNew}
        onSignOut={() => {
          stop.current?.abort();
          onSignOut(null);
        }}
      />
      <main className="chat" data-testid="chat" data-conversation-id={currentId}>
        {!online && (
          <div className="notice network" role="alert" data-testid="offline">
            You are offline. Answers resume when the connection is back.
          </div>
        )}
        <Notice
          problem={problem}
          until={problem?.kind === "rate-limited" ? rateLimitedUntil : null}
          onDismiss={() => setProblem(null)}
        />
        <section className="messages" data-testid="messages" aria-live="polite">
          {history.length === 0 && turns.length === 0 && (
            <p className="empty muted">Ask anything. Answers stream in as they are written.</p>
          )}
          {history.map((message) =>
            message.role === Role.USER ? (
              <div key={message.messageId} className="message user" data-testid="question">
                {message.text}
              </div>
            ) : (
              <Answer
                key={message.messageId}
                gateway={gateway}
                text={message.text}
                state={message.status === MessageStatus.INTERRUPTED ? "interrupted" : "done"}
                messageId={message.messageId}
                model={message.model}
                citations={[]}
                problem={null}
                onProblem={handleProblem}
              />
            ),
          )}
          {turns.map((turn) => (
            <div key={turn.clientMessageId} className="turn" data-testid="turn" data-client-message-id={turn.clientMessageId}>
              <div className="message user" data-testid="question">
                {turn.question}
              </div>
              <Answer
                gateway={gateway}
                text={turn.answer}
                state={turn.state}
                messageId={turn.assistantMessageId}
                model={turn.model}
                citations={turn.citations}
                problem={turn.problem}
                replayed={turn.replayed}
                memoryDegraded={turn.memoryDegraded}
                deltaCount={turn.deltaCount}
                lastSequence={turn.lastSequence}
                events={turn.events}
                onRetry={busy || rateLimited ? undefined : () => void stream(turn)}
                onAskAgain={busy || rateLimited ? undefined : () => void stream(newTurn(turn.question, currentId))}
                onProblem={handleProblem}
              />
            </div>
          ))}
          <div ref={end} />
        </section>
        <form className="composer" onSubmit={send}>
          <textarea
            data-testid="composer"
            aria-label="Message"
            placeholder="Message chatplane…"
            rows={2}
            value={draft}
            onChange={(e) => setDraft(e.target.value)}
            onKeyDown={onKeyDown}
          />
          {busy ? (
            <button type="button" data-testid="stop" onClick={() => stop.current?.abort()}>
              Stop
            </button>
          ) : (
            <button type="submit" data-testid="send" disabled={!draft.trim() || rateLimited}>
              Send
            </button>
          )}
        </form>
      </main>
    </div>
  );
}
