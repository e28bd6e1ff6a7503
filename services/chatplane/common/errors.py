"""Domain exceptions shared by every service, mapped to gRPC status codes in one place.

    ChatplaneError
    ├── InvalidArgument      → INVALID_ARGUMENT  (names the offending field)
    ├── Unauthenticated      → UNAUTHENTICATED
    ├── PermissionDenied     → PERMISSION_DENIED
    ├── NotFound             → NOT_FOUND         (also for another tenant's objects)
    ├── AlreadyExists        → ALREADY_EXISTS
    ├── FailedPrecondition   → FAILED_PRECONDITION
    ├── ResourceExhausted    → RESOURCE_EXHAUSTED (with a retry delay)
    │   └── QuotaExceeded    → RESOURCE_EXHAUSTED (+ google.rpc.QuotaFailure)
    ├── Unavailable          → UNAVAILABLE       (a dependency is down; safe to retry)
    └── DeadlineExceeded     → DEADLINE_EXCEEDED

The mapping itself lives in chatplane.common.error_mapping (the server interceptor).

    ConfigError              a service cannot start with its configuration: caught once at
                             start-up (common/entrypoint.py, the CLI's command group), one
                             line, exit status 2 (EXIT_CONFIG_ERROR)
"""

from __future__ import annotations

from typing import ClassVar


class ChatplaneError(Exception):
    """Base of every domain error; `message` is safe to show to the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ChatplaneError):
    """The request is malformed; `field` is the request field at fault."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


class Unauthenticated(ChatplaneError):
    """No credentials, or credentials that do not verify."""


class PermissionDenied(ChatplaneError):
    """Authenticated, but not allowed to do this."""


class NotFound(ChatplaneError):
    """The object does not exist, or belongs to someone else (never revealed)."""


class AlreadyExists(ChatplaneError):
    """The object to create exists already."""


class FailedPrecondition(ChatplaneError):
    """The system is not in a state in which the request can run."""


class ResourceExhausted(ChatplaneError):
    """A rate limit or quota is spent; `retry_after` seconds until it refills."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QuotaExceeded(ResourceExhausted):
    """A quota (not a rate) is spent until `retry_after` seconds from now; `subject` and
    `description` name it in a google.rpc.QuotaFailure violation."""

    def __init__(self, message: str, retry_after: float, subject: str, description: str) -> None:
        super().__init__(message, retry_after)
        self.subject = subject
        self.description = description


class Unavailable(ChatplaneError):
    """A dependency (message log, store, index, model backend) cannot be reached now."""


class DeadlineExceeded(ChatplaneError):
    """The work did not finish within its deadline."""


class ConfigError(Exception):
    """The settings cannot work (a missing address, an unreadable file, a bad value): the
    service does not start. Not a gRPC status: it never reaches a caller. The message is one
    line that names what to set or fix.

    Each area names its own kind (TlsConfigError, KekConfigError, LlmConfigError, …) as a
    subclass, so that start-up catches this one class; a subclass's `heading` says what the
    message is about where the message alone would not."""

    heading: ClassVar[str] = ""

    def one_line(self) -> str:
        """The start-up message: the heading, then the message, on one line."""
        lines = [line.strip() for line in str(self).splitlines() if line.strip()]
        message = "; ".join(lines) or type(self).__name__
        return f"{self.heading}: {message}" if self.heading else message


EXIT_CONFIG_ERROR = 2
"""The exit status of a process that refuses its configuration (a service or the CLI)."""
