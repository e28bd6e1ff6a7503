// chatplane-chat for Node.js: GatewayService.Chat over gRPC-Web, the way the browser calls it
// (through Envoy), with the generated TypeScript (gen/ts) and @connectrpc/connect-web.
// Same flags, output and exit codes as the Go client (docs/clients.md), -addr being a URL:
//   node chat.js -url http://127.0.0.1:8080 -key KEY -message hello [-conversation ID]
//                [-idempotency-key K] [-json]
import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import { toJsonString } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { ChatResponseSchema, GatewayService } from "../../gen/ts/chatplane/v1/gateway_pb";

const FLAGS = new Set(["url", "key", "message", "conversation", "idempotency-key", "json"]);
const EXIT = { ok: 0, failure: 1, usage: 2, auth: 3, refused: 4, rateLimited: 5, retryable: 6 };

function exitCodeOf(code: Code): number {
  switch (code) {
    case Code.Unauthenticated:
    case Code.PermissionDenied:
      return EXIT.auth;
    case Code.InvalidArgument:
    case Code.NotFound:
      return EXIT.refused;
    case Code.ResourceExhausted:
      return EXIT.rateLimited;
    case Code.Unavailable:
    case Code.DeadlineExceeded:
      return EXIT.retryable;
    default:
      return EXIT.failure;
  }
}

// Code.InvalidArgument -> "INVALID_ARGUMENT", as in docs/api.md.
function canonical(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

async function main(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      // Go-style single-dash flags (-key) are accepted as well as --key.
      args: argv.map((a) => (FLAGS.has(a.replace(/^-/, "")) && !a.startsWith("--") ? `-${a}` : a)),
      options: {
        url: { type: "string", default: "http://127.0.0.1:8080" },
        key: { type: "string", default: process.env["CHATPLANE_API_KEY"] ?? "" },
        message: { type: "string", default: "" },
        conversation: { type: "string", default: "" },
        "idempotency-key": { type: "string", default: "" },
        json: { type: "boolean", default: false },
      },
    }));
  } catch (err) {
    console.error(`chatplane-chat: ${(err as Error).message}`);
    return EXIT.usage;
  }
  if (!values.key || !values.message) {
    console.error("chatplane-chat: -key (or $CHATPLANE_API_KEY) and -message are required");
    return EXIT.usage;
  }
  const idempotencyKey = values["idempotency-key"] || `ts-${randomUUID()}`;
  const client = createClient(GatewayService, createGrpcWebTransport({ baseUrl: values.url }));
  try {
    let ids = "";
    const events = client.chat(
      { conversationId: values.conversation, text: values.message, clientMessageId: idempotencyKey },
      { headers: { authorization: `Bearer ${values.key}` } },
    );
    for await (const response of events) {
      const event = response.event;
      if (values.json) {
        // The same JSON as the SSE endpoint's data lines (zero values included).
        const line = toJsonString(ChatResponseSchema, response, { alwaysEmitImplicit: true });
        process.stdout.write(`${line}\n`);
      } else if (event.case === "delta") {
        process.stdout.write(event.value.text);
      } else if (event.case === "started") {
        ids = `conversation ${event.value.conversationId}, assistant message ${event.value.assistantMessageId}`;
      }
      if (event.case === "done") {
        if (!values.json) {
          process.stdout.write("\n");
          console.error(ids);
        }
        return EXIT.ok;
      }
    }
    console.error(
      `chatplane-chat: the answer stream ended before \`done\`; retry with -idempotency-key ${idempotencyKey}`,
    );
    return EXIT.retryable;
  } catch (err) {
    let error = ConnectError.from(err);
    if (error.code === Code.Unknown && error.cause instanceof TypeError) {
      // fetch could not reach the server (refused, reset, DNS): like gRPC's UNAVAILABLE.
      error = new ConnectError(error.rawMessage, Code.Unavailable, undefined, undefined, err);
    }
    console.error(`chatplane-chat: ${canonical(error.code)}: ${error.rawMessage}`);
    const exit = exitCodeOf(error.code);
    if (exit === EXIT.retryable) {
      console.error(`  retry with -idempotency-key ${idempotencyKey} to get the stored answer`);
    }
    return exit;
  }
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
