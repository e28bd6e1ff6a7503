// The clients of the public API: gRPC-Web to the page's own origin (Envoy), with the API key as
// the `authorization: Bearer` metadata of every call. GatewayService for users,
// OperatorService for support staff (keys with the `operator` role).
import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { GatewayService } from "@gen/chatplane/v1/gateway_pb";
import { OperatorService } from "@gen/chatplane/v1/operator_pb";

export type Gateway = Client<typeof GatewayService>;
export type Operator = Client<typeof OperatorService>;

function transport(apiKey: string, baseUrl: string, fetch?: typeof globalThis.fetch): Transport {
  const authorize: Interceptor = (next) => (request) => {
    request.header.set("authorization", `Bearer ${apiKey}`);
    return next(request);
  };
  return createGrpcWebTransport({ baseUrl, interceptors: [authorize], ...(fetch ? { fetch } : {}) });
}

export function gatewayClient(apiKey: string, baseUrl: string = window.location.origin): Gateway {
  return createClient(GatewayService, transport(apiKey, baseUrl));
}

export function operatorClient(apiKey: string, baseUrl: string = window.location.origin): Operator {
  return createClient(OperatorService, transport(apiKey, baseUrl));
}

/**
 * A GatewayService client whose requests report how much of their body was sent: `fetch`
 * cannot tell (no upload progress), so the requests go through XMLHttpRequest. For uploads.
 */
export function uploadClient(
  apiKey: string,
  onProgress: (sent: number, total: number) => void,
  baseUrl: string = window.location.origin,
): Gateway {
  return createClient(GatewayService, transport(apiKey, baseUrl, xhrFetch(onProgress)));
}

/** `fetch` over XMLHttpRequest, with upload progress; enough for unary gRPC-Web calls. */
export function xhrFetch(onProgress: (sent: number, total: number) => void): typeof globalThis.fetch {
  return (input, init) =>
    new Promise<Response>((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      const url = input instanceof Request ? input.url : String(input);
      xhr.open(init?.method ?? "POST", url);
      xhr.responseType = "arraybuffer";
      new Headers(init?.headers).forEach((value, name) => xhr.setRequestHeader(name, value));
      xhr.upload.onprogress = (event) => onProgress(event.loaded, event.lengthComputable ? event.total : 0);
      xhr.onload = () =>
        resolve(
          new Response(xhr.response as ArrayBuffer, {
            status: xhr.status,
            statusText: xhr.statusText,
            headers: responseHeaders(xhr.getAllResponseHeaders()),
          }),
        );
      xhr.onerror = () => reject(new TypeError("Failed to fetch"));
      xhr.onabort = () => reject(new DOMException("The upload was cancelled.", "AbortError"));
      init?.signal?.addEventListener("abort", () => xhr.abort(), { once: true });
      xhr.send((init?.body ?? null) as XMLHttpRequestBodyInit | null);
    });
}

function responseHeaders(raw: string): Headers {
  const headers = new Headers();
  for (const line of raw.trim().split(/[\r\n]+/)) {
    const colon = line.indexOf(":");
    if (colon > 0) headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
  }
  return headers;
}
