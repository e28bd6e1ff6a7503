import { describe, expect, it } from "vitest";
import { passageParts } from "./passage";

describe("passageParts", () => {
  it("cuts the text around the cited excerpt", () => {
    expect(passageParts("Ferry guide: leaves at 09:40, back at 23:05.", "Ferry guide: leaves")).toEqual({
      before: "",
      excerpt: "Ferry guide: leaves",
      after: " at 09:40, back at 23:05.",
    });
    expect(passageParts("abc abc", "c a")).toEqual({ before: "ab", excerpt: "c a", after: "bc" });
  });

  it("keeps the whole text when the excerpt is empty or not in it", () => {
    expect(passageParts("the text", "")).toEqual({ before: "the text", excerpt: "", after: "" });
    expect(passageParts("the text", "other")).toEqual({ before: "the text", excerpt: "", after: "" });
  });
});
