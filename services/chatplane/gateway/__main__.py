"""`python -m chatplane.gateway`: run the GatewayService process."""

from chatplane.common.entrypoint import run_service
from chatplane.gateway.app import run

run_service("gateway", run)
