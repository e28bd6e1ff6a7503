import { useCallback, useEffect, useState, type ChangeEvent } from "react";
import type { Document } from "@gen/chatplane/v1/resources_pb";
import { formatBytes, mimeTypeOf, uploadRefusal } from "../documents";
import { uploadClient, type Gateway } from "../gateway";
import { describeProblem, type Problem } from "../problems";

interface Upload {
  id: number;
  name: string;
  size: number;
  sent: number;
  /** How many progress reports arrived (the bar moved that often). */
  reports: number;
  state: "uploading" | "indexing" | "done" | "failed";
  message: string;
}

let nextUpload = 1;

/**
 * The tenant's documents (every user of the tenant is answered from them): upload with a
 * progress bar (UploadDocument), the list (ListDocuments), delete (DeleteDocument).
 */
export function Documents(props: {
  apiKey: string;
  gateway: Gateway;
  highlight: string;
  onProblem: (problem: Problem) => void;
}) {
  const { gateway, onProblem } = props;
  const [documents, setDocuments] = useState<Document[] | null>(null);
  const [uploads, setUploads] = useState<Upload[]>([]);
  const [confirming, setConfirming] = useState("");

  const refresh = useCallback(async () => {
    try {
      setDocuments((await gateway.listDocuments({})).documents);
    } catch (reason) {
      onProblem(describeProblem(reason));
    }
  }, [gateway, onProblem]);

  useEffect(() => {
    void refresh();
  }, [refresh]);

  async function upload(file: File): Promise<void> {
    const id = nextUpload++;
    const change = (changes: Partial<Upload>): void =>
      setUploads((all) => all.map((u) => (u.id === id ? { ...u, ...changes } : u)));
    const refusal = uploadRefusal(file.name, file.size);
    setUploads((all) => [
      ...all,
      { id, name: file.name, size: file.size, sent: 0, reports: 0, state: refusal ? "failed" : "uploading", message: refusal ?? "" },
    ]);
    if (refusal) return;
    const client = uploadClient(props.apiKey, (sent, total) => {
      // The request is the document plus a few bytes of framing: the bar follows the file.
      const share = total > 0 ? sent / total : 0;
      setUploads((all) =>
        all.map((u) =>
          u.id === id
            ? { ...u, sent: Math.round(share * file.size), reports: u.reports + 1, state: share >= 1 ? "indexing" : "uploading" }
            : u,
        ),
      );
    });
    try {
      const content = new Uint8Array(await file.arrayBuffer());
      const response = await client.uploadDocument({
        header: { name: file.name, mimeType: mimeTypeOf(file.name) ?? "text/plain" },
        content,
      });
      const chunks = response.document?.chunkCount ?? 0;
      change({ sent: file.size, state: "done", message: `${chunks} passage${chunks === 1 ? "" : "s"}` });
      await refresh();
    } catch (reason) {
      const problem = describeProblem(reason);
      change({ state: "failed", message: problem.message });
      if (problem.kind === "unauthenticated") onProblem(problem);
    }
  }

  function choose(event: ChangeEvent<HTMLInputElement>): void {
    const files = [...(event.target.files ?? [])];
    event.target.value = "";
    for (const file of files) void upload(file);
  }

  async function remove(documentId: string): Promise<void> {
    setConfirming("");
    try {
      await gateway.deleteDocument({ documentId });
      await refresh();
    } catch (reason) {
      onProblem(describeProblem(reason));
    }
  }

  return (
    <section className="documents" data-testid="documents" aria-labelledby="documents-heading">
      <h2 id="documents-heading">Documents</h2>
      <p className="muted">
        Text, markdown and PDF files (up to 4 MiB each). Every user of your organisation is answered
        from them; answers cite the passages they used.
      </p>
      <label className="upload-button">
        Upload documents
        <input
          type="file"
          data-testid="upload-input"
          multiple
          accept=".txt,.md,.markdown,.pdf,text/plain,text/markdown,application/pdf"
          onChange={choose}
        />
      </label>
      {uploads.length > 0 && (
        <ul className="uploads" aria-label="Uploads">
          {uploads.map((u) => (
            <li key={u.id} data-testid="upload" data-name={u.name} data-state={u.state} data-sent={u.sent} data-size={u.size} data-reports={u.reports}>
              <span className="name">{u.name}</span>
              <progress
                max={u.size || 1}
                value={u.sent}
                aria-label={`Uploading ${u.name}`}
                aria-valuetext={`${Math.round((100 * u.sent) / (u.size || 1))} %`}
              />
              <span className={u.state === "failed" ? "error" : "muted"} role={u.state === "failed" ? "alert" : undefined}>
                {u.state === "uploading" && `${formatBytes(u.sent)} of ${formatBytes(u.size)}`}
                {u.state === "indexing" && "Reading and indexing…"}
                {u.state === "done" && `Ready · ${u.message}`}
                {u.state === "failed" && u.message}
              </span>
            </li>
          ))}
        </ul>
      )}
      {documents !== null && documents.length === 0 && <p className="muted">No documents yet.</p>}
      <ul className="document-list" data-testid="document-list">
        {(documents ?? []).map((d) => (
          <li
            key={d.documentId}
            data-testid="document"
            data-document-id={d.documentId}
            data-name={d.name}
            className={d.documentId === props.highlight ? "highlight" : ""}
          >
            <span className="name">{d.name}</span>
            <span className="muted">
              {" "}
              {d.mimeType ? `· ${d.mimeType} ` : ""}· {d.chunkCount} passage{d.chunkCount === 1 ? "" : "s"}
              {d.createTime ? ` · ${new Date(Number(d.createTime.seconds) * 1000).toLocaleString()}` : ""}
            </span>
            {confirming === d.documentId ? (
              <>
                <button type="button" data-testid="confirm-delete" onClick={() => void remove(d.documentId)}>
                  Delete for everyone
                </button>
                <button type="button" className="link" onClick={() => setConfirming("")}>
                  Keep
                </button>
              </>
            ) : (
              <button
                type="button"
                className="link"
                data-testid="delete-document"
                aria-label={`Delete ${d.name}`}
                onClick={() => setConfirming(d.documentId)}
              >
                Delete
              </button>
            )}
          </li>
        ))}
      </ul>
    </section>
  );
}
