"""Which tenants' text is masked before it leaves the system of record (to the model provider
and into the memory index), and the masking itself (chatplane.privacy.pii). The original text
is kept only in the system of record (and its message log)."""

from __future__ import annotations

from dataclasses import dataclass

from chatplane.common.settings import Settings
from chatplane.privacy.pii import redact

ALL_TENANTS = "*"


@dataclass(frozen=True, slots=True)
class RedactionPolicy:
    """`tenants` with redaction on (`*`: every tenant); `region` reads national phone numbers."""

    tenants: frozenset[str] = frozenset()
    region: str = "US"

    @classmethod
    def from_settings(cls, settings: Settings) -> RedactionPolicy:
        return cls(frozenset(settings.pii_redaction_tenants), settings.pii_phone_region)

    def applies(self, tenant_id: str) -> bool:
        """True when the tenant's text is masked."""
        return ALL_TENANTS in self.tenants or tenant_id in self.tenants

    def text(self, tenant_id: str, text: str) -> str:
        """`text` as it may leave the system of record for this tenant."""
        return redact(text, self.region) if self.applies(tenant_id) else text
