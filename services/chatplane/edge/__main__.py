"""`python -m chatplane.edge`: run Envoy in front of the Gateway (see docs/edge.md)."""

from chatplane.common.entrypoint import run_service
from chatplane.edge.app import run

run_service("edge", run)
