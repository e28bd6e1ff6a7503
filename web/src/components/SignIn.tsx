import { useState, type FormEvent } from "react";
import { gatewayClient } from "../gateway";
import { describeProblem } from "../problems";

/** Checks a key with one ListConversations call (the chat's default). */
async function chatCheck(apiKey: string): Promise<void> {
  await gatewayClient(apiKey).listConversations({ pageSize: 1 });
}

/** Asks for an API key and checks it with one call (`check`) before keeping it. */
export function SignIn(props: {
  notice: string | null;
  onSignedIn: (apiKey: string) => void;
  heading?: string;
  check?: (apiKey: string) => Promise<void>;
  describe?: (reason: unknown) => string;
}) {
  const [apiKey, setApiKey] = useState("");
  const [checking, setChecking] = useState(false);
  const [error, setError] = useState<string | null>(props.notice);

  async function submit(event: FormEvent): Promise<void> {
    event.preventDefault();
    const key = apiKey.trim();
    if (!key) return;
    setChecking(true);
    setError(null);
    try {
      await (props.check ?? chatCheck)(key);
      props.onSignedIn(key);
    } catch (reason) {
      setError(props.describe ? props.describe(reason) : describeProblem(reason).message);
      setChecking(false);
    }
  }

  return (
    <main className="sign-in">
      <form onSubmit={(e) => void submit(e)} data-testid="sign-in" aria-label="Sign in">
        <h1>{props.heading ?? "chatplane"}</h1>
        <label htmlFor="api-key">API key</label>
        <input
          id="api-key"
          data-testid="api-key"
          type="password"
          autoComplete="off"
          spellCheck={false}
          placeholder="cp_…"
          value={apiKey}
          onChange={(e) => setApiKey(e.target.value)}
        />
        <button type="submit" data-testid="sign-in-button" disabled={checking || !apiKey.trim()}>
          {checking ? "Checking…" : "Sign in"}
        </button>
        {error && (
          <p role="alert" className="error" data-testid="sign-in-error">
            {error}
          </p>
        )}
        <p className="hint">
          The key stays in this tab only (sessionStorage). <code>make run</code> prints a
          development key.
        </p>
      </form>
    </main>
  );
}
