"""`python -m chatplane.agent`: run the AgentService process."""

from chatplane.agent.app import run
from chatplane.common.entrypoint import run_service

run_service("agent", run)
