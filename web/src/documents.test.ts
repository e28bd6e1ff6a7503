import { describe, expect, it } from "vitest";
import { formatBytes, MAX_UPLOAD_BYTES, mimeTypeOf, uploadRefusal } from "./documents";

describe("documents", () => {
  it("takes the media type from the suffix", () => {
    expect(mimeTypeOf("Guide.PDF")).toBe("application/pdf");
    expect(mimeTypeOf("notes.md")).toBe("text/markdown");
    expect(mimeTypeOf("notes.markdown")).toBe("text/markdown");
    expect(mimeTypeOf("a.txt")).toBe("text/plain");
    expect(mimeTypeOf("README")).toBe("text/plain");
    expect(mimeTypeOf("report.docx")).toBeNull();
  });

  it("refuses what the server would refuse, before sending it", () => {
    expect(uploadRefusal("a.txt", 10)).toBeNull();
    expect(uploadRefusal("a.docx", 10)).toMatch(/Only text/);
    expect(uploadRefusal("a.txt", 0)).toMatch(/empty/);
    expect(uploadRefusal("a.pdf", MAX_UPLOAD_BYTES)).toBeNull();
    expect(uploadRefusal("a.pdf", MAX_UPLOAD_BYTES + 1)).toMatch(/4 MiB/);
  });

  it("formats sizes", () => {
    expect(formatBytes(512)).toBe("512 B");
    expect(formatBytes(2048)).toBe("2.0 KB");
    expect(formatBytes(3 * 1024 * 1024)).toBe("3.0 MB");
  });
});
