// The clients of the public API: gRPC-Web to the page's own origin (Envoy), with the API key as
// the `authorization: Bearer` metadata of every call. GatewayService for users,
// OperatorService for support staff (keys with the `operator` role).
import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { GatewayService } from "@gen/chatplane/v1/gateway_pb";
import { OperatorService } from "@gen/chatplane/v1/operator_pb";

export type Gateway = Client<typeof GatewayService>;
export type Operator = Client<typeof OperatorService>;

function transport(apiKey: string, baseUrl: string): Transport {
  const authorize: Interceptor = (next) => (request) => {
    request.header.set("authorization", `Bearer ${apiKey}`);
    return next(request);
  };
  return createGrpcWebTransport({ baseUrl, interceptors: [authorize] });
}

export function gatewayClient(apiKey: string, baseUrl: string = window.location.origin): Gateway {
  return createClient(GatewayService, transport(apiKey, baseUrl));
}

export function operatorClient(apiKey: string, baseUrl: string = window.location.origin): Operator {
  return createClient(OperatorService, transport(apiKey, baseUrl));
}
