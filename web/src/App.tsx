import { useCallback, useEffect, useMemo, useRef, useState, type FormEvent, type KeyboardEvent } from "react";
import {
  MessageStatus,
  Role,
  type Conversation,
  type HandoffStatus,
  type Message,
} from "@gen/chatplane/v1/resources_pb";
import { Answer } from "./components/Answer";
import { Documents } from "./components/Documents";
import { SourceDialog } from "./components/SourceDialog";
import { HandoffBar } from "./components/HandoffBar";
import { OperatorReply } from "./components/OperatorReply";
import { Notice } from "./components/Notice";
import { Question } from "./components/Question";
import { Sidebar } from "./components/Sidebar";
import { SignIn } from "./components/SignIn";
import { gatewayClient } from "./gateway";
import { describeProblem, type Problem } from "./problems";
import { forgetApiKey, storeApiKey, storedApiKey } from "./session";
import { newTurn, runTurn, type BranchAction, type SourceView, type TurnView } from "./turn";
import { watchConversation } from "./watch";

/** An operator's reply that arrived live, shown after the first `afterTurns` turns. */
interface LiveReply {
  afterTurns: number;
  message: Message;
}

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
// A finished turn reaches the history once the message log's consumer has stored it, shortly
// after `done` (docs/api.md): reading the history for a finished turn looks again, with
// growing pauses, until it holds that turn's answer, for at most this long.
const STORED_WAIT_MS = 5000;

function Chat(props: { apiKey: string; onSignOut: (why: string | null) => void }) {
  const { onSignOut } = props;
  const gateway = useMemo(() => gatewayClient(props.apiKey), [props.apiKey]);
  const [conversations, setConversations] = useState<Conversation[]>([]);
  const [currentId, setCurrentId] = useState("");
  const [history, setHistory] = useState<Message[]>([]);
  const [turns, setTurns] = useState<TurnView[]>([]);
  const turnCount = useRef(0);
  turnCount.current = turns.length;
  const [replies, setReplies] = useState<LiveReply[]>([]);
  const [handoff, setHandoff] = useState<HandoffStatus | null>(null);
  // The main area: the conversation, or the tenant's documents (`highlight`: one of them).
  const [view, setView] = useState<"chat" | "documents">("chat");
  const [highlight, setHighlight] = useState("");
  const [openSource, setOpenSource] = useState<SourceView | null>(null);
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

  // The conversation on screen is watched: who answers it, and the replies of a person.
  useEffect(() => {
    setHandoff(null);
    if (!currentId) return;
    const controller = new AbortController();
    void watchConversation(gateway, currentId, controller.signal, {
      onHandoff: setHandoff,
      onReply: (message) =>
        setReplies((all) =>
          all.some((r) => r.message.messageId === message.messageId)
            ? all
            : [...all, { afterTurns: turnCount.current, message }],
        ),
      onProblem: handleProblem,
    });
    return () => controller.abort();
  }, [gateway, currentId, handleProblem]);

  async function changeHandoff(toHuman: boolean): Promise<void> {
    try {
      const response = toHuman
        ? await gateway.requestHandoff({ conversationId: currentId })
        : await gateway.releaseHandoff({ conversationId: currentId });
      if (response.handoff) setHandoff(response.handoff);
    } catch (reason) {
      handleProblem(describeProblem(reason));
    }
  }

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

  async function read(conversationId: string): Promise<Message[]> {
    const messages: Message[] = [];
    let pageToken = "";
    for (let page = 0; page < HISTORY_PAGES; page++) {
      const response = await gateway.getConversation({ conversationId, pageSize: 100, pageToken });
      messages.push(...response.messages);
      pageToken = response.nextPageToken;
      if (!pageToken) break;
    }
    return messages;
  }

  /** Shows the conversation's active branch; with `answerId`, once it holds that answer. */
  async function open(conversationId: string, answerId = ""): Promise<void> {
    try {
      let messages = await read(conversationId);
      const deadline = Date.now() + STORED_WAIT_MS;
      for (let pause = 50; answerId && Date.now() < deadline; pause = Math.min(2 * pause, 500)) {
        if (messages.some((m) => m.messageId === answerId)) break;
        await new Promise((resolve) => setTimeout(resolve, pause));
        messages = await read(conversationId);
      }
      setCurrentId(conversationId);
      setHistory(messages);
      setTurns([]);
      setReplies([]);
      setView("chat");
      setProblem(null);
    } catch (reason) {
      handleProblem(describeProblem(reason));
    }
  }

  function startNew(): void {
    setCurrentId("");
    setHistory([]);
    setTurns([]);
    setReplies([]);
    setView("chat");
    setProblem(null);
  }

  const rateLimited = rateLimitedUntil !== null;
  const locked = busy || rateLimited;

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
    // A regenerate or an edit added a version: the history shows the branch with its
    // versions ("‹ 2 / 2 ›") from the server.
    if (final.branch !== null && final.conversationId && (final.state === "done" || final.state === "interrupted")) {
      await open(final.conversationId, final.assistantMessageId);
    }
    void refreshConversations();
  }

  /**
   * A regenerate or an edit of the user message `userMessageId`: what follows it on the page
   * goes (it stays on its own branch, one version away), and the new turn streams in its place.
   */
  function branchFrom(userMessageId: string, question: string, action: BranchAction): void {
    if (busy || rateLimited) return;
    const inHistory = history.findIndex((m) => m.messageId === userMessageId);
    setReplies([]);
    if (inHistory >= 0) {
      setHistory(history.slice(0, inHistory));
      setTurns([]);
    } else {
      const inTurns = turns.findIndex((t) => t.userMessageId === userMessageId);
      if (inTurns < 0) return;
      setTurns(turns.slice(0, inTurns));
    }
    void stream(newTurn(question, currentId, action));
  }

  /** "‹ 1 / 2 ›": makes the branch through `messageId` the active one and shows it. */
  function regenerate(userMessageId: string): void {
    const question =
      history.find((m) => m.messageId === userMessageId)?.text ??
      turns.find((t) => t.userMessageId === userMessageId)?.question ??
      "";
    branchFrom(userMessageId, question, { kind: "regenerate", userMessageId });
  }

  async function switchTo(messageId: string): Promise<void> {
    if (busy || !currentId) return;
    try {
      await gateway.setActiveBranch({ conversationId: currentId, messageId });
      await open(currentId);
    } catch (reason) {
      handleProblem(describeProblem(reason));
    }
  }

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
        documentsOpen={view === "documents"}
        onDocuments={() => {
          setHighlight("");
          setView("documents");
        }}
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
        {openSource && (
          <SourceDialog
            source={openSource}
            gateway={gateway}
            onProblem={handleProblem}
            onClose={() => setOpenSource(null)}
            onShowDocument={(documentId) => {
              setOpenSource(null);
              setHighlight(documentId);
              setView("documents");
            }}
          />
        )}
        {view === "documents" ? (
          <Documents apiKey={props.apiKey} gateway={gateway} highlight={highlight} onProblem={handleProblem} />
        ) : (
          <>
            {currentId && (
              <HandoffBar
                status={handoff}
                disabled={busy}
                onRequest={() => void changeHandoff(true)}
                onRelease={() => void changeHandoff(false)}
              />
            )}
            <section className="messages" data-testid="messages" role="log" aria-label="Messages" aria-live="polite">
              {history.length === 0 && turns.length === 0 && (
                <p className="empty muted">Ask anything. Answers stream in as they are written.</p>
              )}
              {history.map((message) =>
                message.role === Role.OPERATOR ? (
                  <OperatorReply key={message.messageId} message={message} />
                ) : message.role === Role.USER ? (
                  <Question
                    key={message.messageId}
                    text={message.text}
                    messageId={message.messageId}
                    siblingIndex={message.siblingIndex}
                    siblingIds={message.siblingMessageIds}
                    disabled={locked}
                    onEdit={(text) => branchFrom(message.messageId, text, { kind: "edit", userMessageId: message.messageId })}
                    onSwitch={(id) => void switchTo(id)}
                  />
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
                    siblingIndex={message.siblingIndex}
                    siblingIds={message.siblingMessageIds}
                    busy={locked}
                    onSwitch={(id) => void switchTo(id)}
                    onRegenerate={
                      message.role === Role.ASSISTANT && message.replyToMessageId
                        ? () => regenerate(message.replyToMessageId)
                        : undefined
                    }
                    onProblem={handleProblem}
                  />
                ),
              )}
              {replies
                .filter((r) => r.afterTurns === 0)
                .map((r) => (
                  <OperatorReply key={r.message.messageId} message={r.message} />
                ))}
              {turns.map((turn, index) => {
                const stored = turn.userMessageId !== "" && (turn.state === "done" || turn.state === "interrupted");
                return (
                  <div
                    key={turn.clientMessageId}
                    className="turn"
                    data-testid="turn"
                    data-client-message-id={turn.clientMessageId}
                    data-branch={turn.branch?.kind ?? ""}
                  >
                    <Question
                      text={turn.question}
                      messageId={turn.userMessageId}
                      disabled={locked}
                      onEdit={
                        stored && turn.branch === null
                          ? (text) => branchFrom(turn.userMessageId, text, { kind: "edit", userMessageId: turn.userMessageId })
                          : undefined
                      }
                      onSwitch={(id) => void switchTo(id)}
                    />
                    <Answer
                      gateway={gateway}
                      text={turn.answer}
                      state={turn.state}
                      messageId={turn.assistantMessageId}
                      model={turn.model}
                      citations={turn.citations}
                      problem={turn.problem}
                      replayed={turn.replayed}
                      resumed={turn.resumed}
                      resumes={turn.resumes}
                      memoryDegraded={turn.memoryDegraded}
                      deltaCount={turn.deltaCount}
                      lastSequence={turn.lastSequence}
                      events={turn.events}
                      busy={locked}
                      onRegenerate={stored ? () => regenerate(turn.userMessageId) : undefined}
                      onOpenSource={setOpenSource}
                      onRetry={locked ? undefined : () => void stream(turn)}
                      onAskAgain={locked ? undefined : () => void stream(newTurn(turn.question, currentId))}
                      onProblem={handleProblem}
                    />
                    {replies
                      .filter((r) => r.afterTurns === index + 1)
                      .map((r) => (
                        <OperatorReply key={r.message.messageId} message={r.message} />
                      ))}
                  </div>
                );
              })}
              <div ref={end} />
            </section>
            <form className="composer" onSubmit={send}>
              <textarea
                data-testid="composer"
                aria-label="Message"
                autoFocus
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
          </>
        )}
      </main>
    </div>
  );
}
