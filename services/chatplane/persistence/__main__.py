"""`python -m chatplane.persistence`: run the Persistence process (flags such as
`--persistence-port 0 --data-dir DIR` override the `CHATPLANE_*` environment)."""

from chatplane.common.entrypoint import run_service
from chatplane.persistence.service import run

run_service("persistence", run)
