import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { describeProblem, isTransient, retryDelaySeconds } from "./problems";
import { fakeGateway } from "./testing/fakeGateway";
import { rateLimited, retryInfo } from "./testing/retryInfo";

describe("retryDelaySeconds", () => {
  it("reads RetryInfo.retry_delay", () => {
    expect(retryDelaySeconds(retryInfo(12.5).value)).toBe(12.5);
  });
  it("is null without a delay", () => {
    expect(retryDelaySeconds(new Uint8Array())).toBeNull();
  });
});

describe("describeProblem", () => {
  it("turns UNAUTHENTICATED into a sign-in message", () => {
    const problem = describeProblem(new ConnectError("bad key", Code.Unauthenticated));
    expect(problem).toEqual({
      kind: "unauthenticated",
      message: "This API key was not accepted. Sign in again.",
    });
    expect(isTransient(problem)).toBe(false);
  });

  it("reads the retry time of RESOURCE_EXHAUSTED from grpc-status-details-bin", async () => {
    const gateway = fakeGateway({
      listConversations() {
        throw rateLimited(19.2);
      },
    });
    const failure = await gateway.listConversations({}).catch((reason: unknown) => reason);
    expect(describeProblem(failure)).toEqual({
      kind: "rate-limited",
      message: "Too many requests. Try again in 20 s.",
      retryAfterSeconds: 19.2,
    });
  });

  it("falls back to a retry time in the message, then to 'a moment'", () => {
    const said = describeProblem(new ConnectError("slow down, retry in 7 s", Code.ResourceExhausted));
    expect(said).toMatchObject({ retryAfterSeconds: 7, message: "Too many requests. Try again in 7 s." });
    const unsaid = describeProblem(new ConnectError("slow down", Code.ResourceExhausted));
    expect(unsaid).toMatchObject({ retryAfterSeconds: null, message: "Too many requests. Try again in a moment." });
  });

  it("recognises a lost connection", () => {
    for (const reason of [new TypeError("Failed to fetch"), new TypeError("network error")]) {
      const problem = describeProblem(ConnectError.from(reason));
      expect(problem.kind).toBe("network");
      expect(isTransient(problem)).toBe(true);
    }
    expect(isTransient(describeProblem(new ConnectError("down", Code.Unavailable)))).toBe(true);
  });

  it("names anything else", () => {
    const problem = describeProblem(new ConnectError("text: must not be empty", Code.InvalidArgument));
    expect(problem).toEqual({
      kind: "other",
      code: "InvalidArgument",
      message: "Something went wrong (InvalidArgument): text: must not be empty.",
    });
    expect(isTransient(problem)).toBe(false);
  });
});
