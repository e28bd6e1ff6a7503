"""The edge: Envoy in front of the Gateway for gRPC, gRPC-Web and REST/JSON with Server-Sent
Events, its configuration rendered from the settings."""
