import { useEffect, useRef, useState } from "react";
import { Code, ConnectError } from "@connectrpc/connect";
import type { DocumentChunk } from "@gen/chatplane/v1/resources_pb";
import type { Gateway } from "../gateway";
import { passageParts } from "../passage";
import { describeProblem, type Problem } from "../problems";
import type { SourceView } from "../turn";

type ChunkState =
  | { state: "loading" }
  | { state: "loaded"; chunk: DocumentChunk }
  | { state: "failed"; message: string };

/**
 * The cited passage of a document, in a modal dialog (Escape or Close closes it): the whole
 * chunk (GetDocumentChunk) with the citation's excerpt highlighted; the excerpt alone until it
 * arrives, or if it cannot be read.
 */
export function SourceDialog(props: {
  source: SourceView;
  gateway: Gateway;
  onClose: () => void;
  onShowDocument: (documentId: string) => void;
  onProblem: (problem: Problem) => void;
}) {
  const { source, gateway, onProblem } = props;
  const dialog = useRef<HTMLDialogElement | null>(null);
  const [chunk, setChunk] = useState<ChunkState>({ state: "loading" });
  useEffect(() => {
    const element = dialog.current;
    if (element && !element.open) element.showModal();
    return () => element?.close();
  }, []);
  useEffect(() => {
    const abort = new AbortController();
    gateway
      .getDocumentChunk({ documentId: source.documentId, chunkIndex: source.chunkIndex }, { signal: abort.signal })
      .then((response) => {
        if (response.chunk) setChunk({ state: "loaded", chunk: response.chunk });
      })
      .catch((reason: unknown) => {
        if (abort.signal.aborted) return;
        const problem = describeProblem(reason);
        if (problem.kind === "unauthenticated") onProblem(problem);
        const gone = ConnectError.from(reason).code === Code.NotFound;
        setChunk({
          state: "failed",
          message: gone
            ? "This passage is no longer available: its document was deleted."
            : `The whole passage could not be loaded. ${problem.message}`,
        });
      });
    return () => abort.abort();
  }, [gateway, source.documentId, source.chunkIndex, onProblem]);

  const loaded = chunk.state === "loaded" ? chunk.chunk : null;
  const parts = loaded ? passageParts(loaded.text, source.snippet) : null;
  return (
    <dialog
      ref={dialog}
      className="source-dialog"
      data-testid="source-dialog"
      data-document-id={source.documentId}
      aria-labelledby="source-dialog-title"
      onClose={props.onClose}
    >
      <h2 id="source-dialog-title">{loaded?.documentName || source.title || "Document"}</h2>
      <p className="muted" data-testid="source-position">
        Passage {source.chunkIndex + 1}
        {loaded && ` of ${loaded.chunkCount}`} · relevance {source.score.toFixed(2)}
      </p>
      <blockquote data-testid="source-text" data-state={chunk.state} aria-busy={chunk.state === "loading"}>
        {parts ? (
          <>
            {parts.before}
            {parts.excerpt && (
              <mark data-testid="source-excerpt" title="The excerpt the answer cited">
                {parts.excerpt}
              </mark>
            )}
            {parts.after}
          </>
        ) : (
          source.snippet
        )}
      </blockquote>
      {chunk.state === "loading" && <p className="muted">Loading the whole passage…</p>}
      {chunk.state === "failed" && (
        <p className="error" role="alert" data-testid="source-error">
          {chunk.message}
        </p>
      )}
      <div className="actions">
        <button type="button" data-testid="show-document" onClick={() => props.onShowDocument(source.documentId)}>
          Show in documents
        </button>
        <button type="button" data-testid="close-source" onClick={() => dialog.current?.close()}>
          Close
        </button>
      </div>
    </dialog>
  );
}
