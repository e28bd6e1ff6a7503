"""`python -m chatplane.memory`: run the MemoryService process."""

from chatplane.common.entrypoint import run_service
from chatplane.memory.app import run

run_service("memory", run)
