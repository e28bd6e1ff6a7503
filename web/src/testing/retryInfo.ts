// google.rpc.RetryInfo as the Gateway sends it (field 1: a google.protobuf.Duration).
import { create, toBinary } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { Code, ConnectError } from "@connectrpc/connect";

export function retryInfo(seconds: number): { type: string; value: Uint8Array } {
  const whole = Math.floor(seconds);
  const delay = create(DurationSchema, {
    seconds: BigInt(whole),
    nanos: Math.round((seconds - whole) * 1e9),
  });
  const value = new BinaryWriter()
    .tag(1, WireType.LengthDelimited)
    .bytes(toBinary(DurationSchema, delay))
    .finish();
  return { type: "google.rpc.RetryInfo", value };
}

/** RESOURCE_EXHAUSTED with a RetryInfo detail, as the Gateway's rate limit fails a call. */
export function rateLimited(seconds: number): ConnectError {
  const error = new ConnectError("rate limit exceeded", Code.ResourceExhausted);
  error.details.push(retryInfo(seconds));
  return error;
}
