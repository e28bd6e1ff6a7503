// A GatewayService for unit tests: in memory, but over the real gRPC-Web protocol code of
// @connectrpc/connect (envelopes, trailers, grpc-status-details-bin), so the client code under
// test sees what it sees in the browser.
import {
  createClient,
  createConnectRouter,
  type ServiceImpl,
} from "@connectrpc/connect";
import { createUniversalHandlerClient } from "@connectrpc/connect/protocol";
import { createTransport } from "@connectrpc/connect/protocol-grpc-web";
import { GatewayService } from "@gen/chatplane/v1/gateway_pb";
import type { Gateway } from "../gateway";

export function fakeGateway(implementation: Partial<ServiceImpl<typeof GatewayService>>): Gateway {
  const router = createConnectRouter();
  router.service(GatewayService, implementation);
  return createClient(
    GatewayService,
    createTransport({
      httpClient: createUniversalHandlerClient(router.handlers),
      baseUrl: "https://in-memory",
      useBinaryFormat: true,
      interceptors: [],
      acceptCompression: [],
      sendCompression: null,
      compressMinBytes: Number.MAX_SAFE_INTEGER,
      readMaxBytes: Number.MAX_SAFE_INTEGER,
      writeMaxBytes: Number.MAX_SAFE_INTEGER,
    }),
  );
}
