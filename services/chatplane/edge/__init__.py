"""The edge: Envoy in front of the Gateway for gRPC, gRPC-Web and REST/JSON with Server-Sent
Events; its configuration is envoy/envoy.yaml at the top of the repository, filled in from the
settings."""
