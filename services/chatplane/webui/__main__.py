"""`python -m chatplane.webui`: serve the built web chat (web/dist) on loopback."""

from chatplane.common.entrypoint import run_service
from chatplane.webui.app import run

run_service("webui", run)
