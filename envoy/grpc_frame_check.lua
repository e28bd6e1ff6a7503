-- Envoy Lua filter of the edge: every public gRPC method takes exactly one request message, so
-- a gRPC or gRPC-Web request body must be exactly one frame (1 flags byte, 4-byte big-endian
-- length, that many bytes). Anything else is answered here with 400 / INVALID_ARGUMENT: an
-- empty or truncated body would otherwise leave the Gateway waiting for the rest.
-- The buffer filter before this one has the whole body (within the size limit).

local function reject(handle, problem)
  handle:respond({
    [":status"] = "400",
    ["content-type"] = "application/grpc",
    ["grpc-status"] = "3",
    ["grpc-message"] = problem,
  }, "")
end

function envoy_on_request(handle)
  local content_type = handle:headers():get("content-type") or ""
  if string.sub(content_type, 1, 16) ~= "application/grpc" then
    return
  end
  local body = handle:body()
  local size = 0
  if body ~= nil then
    size = body:length()
  end
  if size < 5 then
    reject(handle, "malformed gRPC request: no complete message frame")
    return
  end
  local prefix = body:getBytes(0, 5)
  local flags = string.byte(prefix, 1)
  local length = string.byte(prefix, 2) * 16777216 + string.byte(prefix, 3) * 65536
    + string.byte(prefix, 4) * 256 + string.byte(prefix, 5)
  local encoding = handle:headers():get("grpc-encoding") or "identity"
  if flags > 1 then
    reject(handle, "malformed gRPC request: unknown frame flags")
  elseif flags == 1 and encoding == "identity" then
    reject(handle, "malformed gRPC request: compressed frame without grpc-encoding")
  elseif length ~= size - 5 then
    reject(handle, "malformed gRPC request: expected exactly one message frame")
  end
end
