// What went wrong with a call, in the words the page shows: a bad key (back to sign-in), a
// rate limit (with the time from google.rpc.RetryInfo), a lost connection, or anything else.
import { fromBinary } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { Code, ConnectError } from "@connectrpc/connect";

export type Problem =
  | { kind: "unauthenticated"; message: string }
  | { kind: "rate-limited"; message: string; retryAfterSeconds: number | null }
  | { kind: "network"; message: string }
  | { kind: "unavailable"; message: string }
  | { kind: "cancelled"; message: string }
  | { kind: "other"; message: string; code: string };

const RETRY_INFO = "google.rpc.RetryInfo";

/** google.rpc.RetryInfo.retry_delay (field 1, a google.protobuf.Duration), in seconds. */
export function retryDelaySeconds(value: Uint8Array): number | null {
  const reader = new BinaryReader(value);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1 && wireType === WireType.LengthDelimited) {
      const delay = fromBinary(DurationSchema, reader.bytes());
      return Number(delay.seconds) + delay.nanos / 1e9;
    }
    reader.skip(wireType);
  }
  return null;
}

/** The retry delay a RESOURCE_EXHAUSTED error carries, from its details or its message. */
function retryAfter(error: ConnectError): number | null {
  for (const detail of error.details) {
    if ("desc" in detail) continue; // only details that came over the wire
    if (detail.type === RETRY_INFO) {
      const seconds = retryDelaySeconds(detail.value);
      if (seconds !== null) return seconds;
    }
  }
  const said = /retry (?:in|after) (\d+(?:\.\d+)?) ?s/i.exec(error.rawMessage);
  return said?.[1] !== undefined ? Number(said[1]) : null;
}

/** A failure of fetch itself or of the response body: the connection is gone. */
function isConnectionLoss(error: ConnectError): boolean {
  if (error.code !== Code.Unknown && error.code !== Code.Internal) return false;
  if (error.cause instanceof TypeError) return true; // "Failed to fetch", "network error"
  return /missing trailer|network|fetch|premature|terminated/i.test(error.rawMessage);
}

export function describeProblem(reason: unknown): Problem {
  const error = ConnectError.from(reason);
  switch (error.code) {
    case Code.Unauthenticated:
      return { kind: "unauthenticated", message: "This API key was not accepted. Sign in again." };
    case Code.ResourceExhausted: {
      const seconds = retryAfter(error);
      const wait = seconds === null ? "a moment" : `${Math.max(1, Math.ceil(seconds))} s`;
      return {
        kind: "rate-limited",
        message: `Too many requests. Try again in ${wait}.`,
        retryAfterSeconds: seconds,
      };
    }
    case Code.Canceled:
      return { kind: "cancelled", message: "Stopped." };
    case Code.Unavailable:
      return {
        kind: "unavailable",
        message: "The chat service is unavailable right now.",
      };
    default:
      if (isConnectionLoss(error)) {
        return { kind: "network", message: "The connection to the server was lost." };
      }
      return {
        kind: "other",
        message: `Something went wrong (${Code[error.code]}): ${error.rawMessage || "no details"}.`,
        code: Code[error.code],
      };
  }
}

/** Whether a Chat call that failed this way may be retried with the same idempotency key. */
export function isTransient(problem: Problem): boolean {
  return problem.kind === "network" || problem.kind === "unavailable";
}
