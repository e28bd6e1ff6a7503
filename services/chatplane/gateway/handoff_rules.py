"""The automatic handoff rules (docs/handoff.md): a user's message asking for a person, and
repeated thumbs-down in one conversation. Each rule fires at most once per conversation
(the system of record remembers which have fired)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from chatplane.common.errors import ConfigError
from chatplane.common.settings import Settings

EXPLICIT_REQUEST_RULE: Final = "explicit_request"
THUMBS_DOWN_RULE: Final = "thumbs_down"


@dataclass(frozen=True, slots=True)
class HandoffRules:
    """The rules as configured; build with `from_settings`."""

    request_patterns: tuple[re.Pattern[str], ...]
    thumbs_down_threshold: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HandoffRules:
        """The rules of `settings`; a pattern that is not a regular expression is a
        ConfigError naming it (the Gateway refuses to start)."""
        patterns = []
        for pattern in settings.handoff_request_patterns:
            try:
                patterns.append(re.compile(pattern, re.IGNORECASE))
            except re.error as error:
                raise ConfigError(
                    f"CHATPLANE_HANDOFF_REQUEST_PATTERNS: {pattern!r}: {error}"
                ) from error
        return cls(tuple(patterns), settings.handoff_thumbs_down_threshold)

    def asks_for_human(self, text: str) -> bool:
        """Whether the user's message asks to talk to a person."""
        return any(pattern.search(text) for pattern in self.request_patterns)

    def too_many_thumbs_down(self, count: int) -> bool:
        """Whether `count` thumbs-down ratings in a conversation call for a person."""
        return 0 < self.thumbs_down_threshold <= count
