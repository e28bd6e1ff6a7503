"""Writes a feedback dataset (docs/datasets.md): pages of rated answers into one JSONL file
per format, a metadata file with each line's answer, and a manifest of what was written."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from chatplane.common.timestamps import datetime_of
from chatplane.datasets.formats import FORMATS, RECORDS, turns
from chatplane.v1 import admin_resources_pb2

MANIFEST = "manifest.json"
METADATA = "metadata.jsonl"


@dataclass(frozen=True, slots=True)
class ExportRange:
    """What was asked for: answers created in [since, until) rated at least min_rating."""

    since: datetime
    until: datetime | None
    min_rating: int
    tenant: str | None


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


class DatasetWriter:
    """Writes a dataset into `out` (created): `add` each answer, then `close` for the
    manifest (also written as manifest.json). Plain file writes, no event loop."""

    def __init__(self, out: Path, asked: ExportRange) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self._out = out
        self._asked = asked
        self._files: dict[str, TextIO] = {}
        self._written = 0
        self._skipped = 0
        self._tenants: Counter[str] = Counter()
        self._variants: Counter[str] = Counter()
        self._ratings: Counter[str] = Counter()
        self._redacted: set[str] = set()
        self._first: datetime | None = None
        self._last: datetime | None = None
        for name in (*FORMATS, METADATA):
            file_name = name if name == METADATA else f"{name}.jsonl"
            self._files[name] = (out / file_name).open("w", encoding="utf-8")

    def add(self, answer: admin_resources_pb2.RatedAnswer) -> bool:
        """Writes one answer in every format; False when its branch has no user turn before
        the answer (it is counted as skipped)."""
        conversation = turns(answer.messages)
        if conversation is None:
            self._skipped += 1
            return False
        for name in FORMATS:
            self._files[name].write(_line(RECORDS[name](conversation)))
        created = datetime_of(answer.create_time)
        self._files[METADATA].write(
            _line(
                {
                    "tenant_id": answer.tenant_id,
                    "conversation_id": answer.conversation_id,
                    "message_id": answer.message_id,
                    "variant": answer.variant,
                    "model": answer.model,
                    "rating": answer.rating,
                    "score": answer.score if answer.HasField("score") else None,
                    "create_time": _iso(created),
                    "redacted": answer.redacted,
                }
            )
        )
        self._written += 1
        self._tenants[answer.tenant_id] += 1
        self._variants[answer.variant] += 1
        self._ratings[str(answer.rating)] += 1
        if answer.redacted:
            self._redacted.add(answer.tenant_id)
        self._first = created if self._first is None else min(self._first, created)
        self._last = created if self._last is None else max(self._last, created)
        return True

    def close(self, *, complete: bool = True) -> dict[str, Any]:
        """Closes the files, writes the manifest and returns it (`complete` False: the
        export stopped on an error, the files hold what came before it)."""
        for handle in self._files.values():
            handle.close()
        asked = self._asked
        manifest = {
            "created": _iso(datetime.now(UTC)),
            "complete": complete,
            "records": self._written,
            "skipped": self._skipped,
            "formats": {
                name: {"file": f"{name}.jsonl", "records": self._written} for name in FORMATS
            },
            "metadata": METADATA,
            "filters": {
                "since": _iso(asked.since),
                "until": _iso(asked.until),
                "min_rating": asked.min_rating,
                "tenant": asked.tenant,
            },
            "date_range": {"first": _iso(self._first), "last": _iso(self._last)},
            "tenants": dict(sorted(self._tenants.items())),
            "variants": dict(sorted(self._variants.items())),
            "ratings": dict(sorted(self._ratings.items())),
            "redacted_tenants": sorted(self._redacted),
        }
        (self._out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        return manifest


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"
