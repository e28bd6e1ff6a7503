// Compiled (never run) by tests/clients/test_generated_code.py: the generated service descriptor
// has the shape @connectrpc/connect v2 clients are made from.
import { create } from "@bufbuild/protobuf";
import { ChatRequestSchema, GatewayService } from "../../gen/ts/chatplane/v1/gateway_pb";

export const request = create(ChatRequestSchema, { text: "hello", clientMessageId: "k1" });
export const chat: string = GatewayService.method.chat.name;
export const streaming: "server_streaming" = GatewayService.method.chat.methodKind;
