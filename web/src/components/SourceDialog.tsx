import { useEffect, useRef } from "react";
import type { SourceView } from "../turn";

/** The cited passage of a document, in a modal dialog (Escape or Close closes it). */
export function SourceDialog(props: {
  source: SourceView;
  onClose: () => void;
  onShowDocument: (documentId: string) => void;
}) {
  const dialog = useRef<HTMLDialogElement | null>(null);
  useEffect(() => {
    const element = dialog.current;
    if (element && !element.open) element.showModal();
    return () => element?.close();
  }, []);
  return (
    <dialog
      ref={dialog}
      className="source-dialog"
      data-testid="source-dialog"
      data-document-id={props.source.documentId}
      aria-labelledby="source-dialog-title"
      onClose={props.onClose}
    >
      <h2 id="source-dialog-title">{props.source.title || "Document"}</h2>
      <p className="muted" data-testid="source-position">
        Passage {props.source.chunkIndex + 1} · relevance {props.source.score.toFixed(2)}
      </p>
      <blockquote data-testid="source-text">{props.source.snippet}</blockquote>
      <div className="actions">
        <button
          type="button"
          data-testid="show-document"
          onClick={() => props.onShowDocument(props.source.documentId)}
        >
          Show in documents
        </button>
        <button type="button" data-testid="close-source" onClick={() => dialog.current?.close()}>
          Close
        </button>
      </div>
    </dialog>
  );
}
