// The GatewayService client: gRPC-Web to the page's own origin (Envoy), with the API key as
// the `authorization: Bearer` metadata of every call.
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { GatewayService } from "@gen/chatplane/v1/gateway_pb";

export type Gateway = Client<typeof GatewayService>;

export function gatewayClient(apiKey: string, baseUrl: string = window.location.origin): Gateway {
  const authorize: Interceptor = (next) => (request) => {
    request.header.set("authorization", `Bearer ${apiKey}`);
    return next(request);
  };
  return createClient(
    GatewayService,
    createGrpcWebTransport({ baseUrl, interceptors: [authorize] }),
  );
}
