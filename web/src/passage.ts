// A cited passage shown whole: the chunk's text cut around the excerpt the citation carried
// (the first 200 characters of the chunk), so the dialog can highlight what was cited.

export interface PassageParts {
  before: string;
  excerpt: string;
  after: string;
}

/**
 * `text` as (before, excerpt, after) around the first occurrence of `excerpt`; the whole text
 * as `before` when the excerpt is empty or not in it (the chunk changed since it was cited).
 */
export function passageParts(text: string, excerpt: string): PassageParts {
  const at = excerpt === "" ? -1 : text.indexOf(excerpt);
  if (at < 0) return { before: text, excerpt: "", after: "" };
  return { before: text.slice(0, at), excerpt, after: text.slice(at + excerpt.length) };
}
