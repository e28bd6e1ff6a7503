"""PII detection and masking: emails, phone numbers, payment card numbers (Luhn-checked),
IBANs (ISO 13616 check digits) and national identity numbers of a few countries.

Each detector finds candidates with a pattern and keeps only those a validator accepts:
`phonenumbers` (Google's libphonenumber) for phone numbers, `python-stdnum` for the check
digits of cards, IBANs and national ids. So a 16-digit order number that fails the Luhn check
is left alone, while a real card number written with spaces or dashes is masked. Where
candidates overlap, the earlier detector in `_DETECTORS` wins (a card number is not also
reported as a phone number).

Masking replaces each finding with its kind in brackets (`[EMAIL]`, `[CARD]`, ...), so the
model still knows something was there."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum

import phonenumbers
from stdnum import iban, luhn
from stdnum.br import cpf
from stdnum.de import idnr
from stdnum.es import dni
from stdnum.fr import nir
from stdnum.in_ import aadhaar
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.us import ssn


class PiiKind(StrEnum):
    """What a finding is; its value is the mask text."""

    EMAIL = "EMAIL"
    CARD = "CARD"
    IBAN = "IBAN"
    NATIONAL_ID = "NATIONAL_ID"
    PHONE = "PHONE"


@dataclass(frozen=True, slots=True)
class Finding:
    """One piece of PII: `text[start:end]` is of `kind`."""

    kind: PiiKind
    start: int
    end: int


# A pragmatic subset of RFC 5322 addresses: what people type in chat.
_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9](?:[A-Za-z0-9._%+'-]{0,63})@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)
# 13-19 digits, optionally grouped by single spaces or dashes.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# The start of an IBAN: country code and check digits, then at least 11 more alphanumerics
# (optionally grouped by single spaces). The end is found by validation (_ibans).
_IBAN_START = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?= ?[A-Za-z0-9])")
_IBAN_BODY = re.compile(r"(?: ?[A-Za-z0-9]){11,30}")


@dataclass(frozen=True, slots=True)
class _NationalId:
    pattern: re.Pattern[str]
    is_valid: Callable[[str], bool]


_NATIONAL_IDS = (
    _NationalId(re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)"), ssn.is_valid),  # US SSN
    _NationalId(re.compile(r"(?<!\d)\d{3}\.?\d{3}\.?\d{3}-?\d{2}(?!\d)"), cpf.is_valid),  # BR CPF
    _NationalId(re.compile(r"(?<![\dA-Za-z])\d{8}[A-Za-z](?![A-Za-z\d])"), dni.is_valid),  # ES DNI
    _NationalId(
        re.compile(
            r"(?<![\dA-Za-z])[A-Za-z]{6}\d{2}[A-Za-z]\d{2}[A-Za-z]\d{3}[A-Za-z](?![\dA-Za-z])"
        ),
        codicefiscale.is_valid,
    ),  # IT codice fiscale
    _NationalId(
        re.compile(r"(?<!\d)[12] ?\d{2} ?\d{2} ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}(?!\d)"),
        nir.is_valid,
    ),  # FR NIR (social security number)
    _NationalId(re.compile(r"(?<!\d)\d{4} ?\d{4} ?\d{4}(?!\d)"), aadhaar.is_valid),  # IN Aadhaar
    _NationalId(re.compile(r"(?<!\d)\d{2} ?\d{3} ?\d{3} ?\d{3}(?!\d)"), idnr.is_valid),  # DE IdNr
    _NationalId(re.compile(r"(?<!\d)\d{9}(?!\d)"), bsn.is_valid),  # NL BSN
)


def _emails(text: str, region: str) -> Iterator[Finding]:
    for match in _EMAIL.finditer(text):
        yield Finding(PiiKind.EMAIL, match.start(), match.end())


def _cards(text: str, region: str) -> Iterator[Finding]:
    for match in _CARD.finditer(text):
        if luhn.is_valid(re.sub(r"[ -]", "", match.group())):
            yield Finding(PiiKind.CARD, match.start(), match.end())


def _ibans(text: str, region: str) -> Iterator[Finding]:
    # Words after an IBAN ("... 0130 00 thanks") would join a greedy match, so try each end
    # from the longest down and keep the longest that passes the mod-97 check.
    for start in _IBAN_START.finditer(text):
        body = _IBAN_BODY.match(text, start.end())
        if body is None:
            continue
        ends = [m.end() for m in re.finditer(r"[A-Za-z0-9](?= |$|[^A-Za-z0-9])", body.group())]
        for end in sorted(ends, reverse=True):
            candidate = text[start.start() : body.start() + end]
            boundary = body.start() + end
            if (boundary == len(text) or not text[boundary].isalnum()) and iban.is_valid(candidate):
                yield Finding(PiiKind.IBAN, start.start(), boundary)
                break


def _national_ids(text: str, region: str) -> Iterator[Finding]:
    for detector in _NATIONAL_IDS:
        for match in detector.pattern.finditer(text):
            if detector.is_valid(match.group()):
                yield Finding(PiiKind.NATIONAL_ID, match.start(), match.end())


def _phones(text: str, region: str) -> Iterator[Finding]:
    # VALID leniency: the number must be a real, assignable number for its region (numbers in
    # international form, +CC..., are recognised whatever the default region).
    matcher = phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID)
    for match in matcher:
        yield Finding(PiiKind.PHONE, match.start, match.end)


# Order is precedence when findings overlap.
_DETECTORS: tuple[Callable[[str, str], Iterator[Finding]], ...] = (
    _emails,
    _ibans,
    _cards,
    _national_ids,
    _phones,
)


def find_pii(text: str, region: str = "US") -> list[Finding]:
    """Every piece of PII in `text`, in order, without overlaps. `region` (ISO 3166 alpha-2)
    is how phone numbers written without a country code are read."""
    taken: list[Finding] = []
    for detector in _DETECTORS:
        for finding in detector(text, region):
            if not any(finding.start < t.end and t.start < finding.end for t in taken):
                taken.append(finding)
    taken.sort(key=lambda finding: finding.start)
    return taken


def redact(text: str, region: str = "US") -> str:
    """`text` with every piece of PII replaced by its kind in brackets, e.g. `[EMAIL]`."""
    pieces: list[str] = []
    position = 0
    for finding in find_pii(text, region):
        pieces.append(text[position : finding.start])
        pieces.append(f"[{finding.kind.value}]")
        position = finding.end
    pieces.append(text[position:])
    return "".join(pieces)
