// What the page sends for a file it uploads (UploadDocument, docs/rag.md).

/** UploadDocument's limit: one gRPC message of the Gateway (larger: IngestDocument, gRPC). */
export const MAX_UPLOAD_BYTES = 4 * 1024 * 1024 - 1024;

/** The media type of a file by its suffix, as `chatplane ingest` picks it; null: refused here. */
export function mimeTypeOf(name: string): string | null {
  const suffix = name.toLowerCase().match(/\.([a-z0-9]+)$/)?.[1] ?? "";
  if (suffix === "pdf") return "application/pdf";
  if (["md", "markdown", "mdx"].includes(suffix)) return "text/markdown";
  if (["txt", "text", "csv", "log", ""].includes(suffix)) return "text/plain";
  return null;
}

/** Why a file cannot be uploaded, or null when it can. */
export function uploadRefusal(name: string, size: number): string | null {
  if (mimeTypeOf(name) === null) return "Only text (.txt), markdown (.md) and PDF (.pdf) files can be uploaded.";
  if (size === 0) return "The file is empty.";
  if (size > MAX_UPLOAD_BYTES) return "The file is larger than 4 MiB.";
  return null;
}

/** "12.3 KB" */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}
