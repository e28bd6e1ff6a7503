"""PII masking: what is masked, what is left alone, and how overlaps resolve."""

from __future__ import annotations

import pytest

from chatplane.privacy.pii import PiiKind, find_pii, redact
from chatplane.privacy.policy import RedactionPolicy


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("write to john.doe+news@example.co.uk.", "write to [EMAIL]."),
        ("visa 4111 1111 1111 1111 ok", "visa [CARD] ok"),
        ("mc 5555-5555-5555-4444", "mc [CARD]"),
        ("amex 378282246310005", "amex [CARD]"),
        ("IBAN DE89 3704 0044 0532 0130 00 thanks", "IBAN [IBAN] thanks"),
        ("pay GB82WEST12345698765432.", "pay [IBAN]."),
        ("FR14 2004 1010 0505 0001 3M02 606", "[IBAN]"),
        ("ssn 536-22-1234", "ssn [NATIONAL_ID]"),
        ("CPF 390.533.447-05", "CPF [NATIONAL_ID]"),
        ("DNI 12345678Z", "DNI [NATIONAL_ID]"),
        ("BSN 111222333", "BSN [NATIONAL_ID]"),
        ("call +44 20 7946 0958 now", "call [PHONE] now"),
        ("call (415) 555-2671", "call [PHONE]"),
    ],
)
def test_pii_is_masked_by_kind(text: str, masked: str) -> None:
    assert redact(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "order 1234 5678 9012 3456 shipped",  # 16 digits failing the Luhn check
        "XX89 3704 0044 0532 0130 00",  # not a country
        "DE00 3704 0044 0532 0130 00",  # wrong IBAN check digits
        "ssn 000-12-3456",  # SSNs never start with 000
        "meeting at 10:30 on 2024-05-01, version 1.2.3, 3 items",
        "email me at john at example dot com",
        "the answer is 42 and pi is 3.14159",
    ],
)
def test_lookalikes_are_left_alone(text: str) -> None:
    assert find_pii(text) == []
    assert redact(text) == text


def test_a_number_without_country_code_is_read_in_the_given_region() -> None:
    assert redact("ring 020 7946 0958", region="GB") == "ring [PHONE]"
    assert [f.kind for f in find_pii("ring 020 7946 0958", region="GB")] == [PiiKind.PHONE]


def test_overlaps_resolve_to_the_stronger_detector_and_findings_are_ordered() -> None:
    text = "card 4111111111111111, mail a@b.io, iban GB82WEST12345698765432"
    findings = find_pii(text)
    assert [f.kind for f in findings] == [PiiKind.CARD, PiiKind.EMAIL, PiiKind.IBAN]
    assert [text[f.start : f.end] for f in findings] == [
        "4111111111111111",
        "a@b.io",
        "GB82WEST12345698765432",
    ]


def test_redaction_is_idempotent_and_keeps_the_rest_of_the_text() -> None:
    text = (
        "Hi, I'm Ana (ana@example.org, +34 612 34 56 78); refund to ES91 2100 0418 4502 0005 1332."
    )
    once = redact(text)
    assert once == "Hi, I'm Ana ([EMAIL], [PHONE]); refund to [IBAN]."
    assert redact(once) == once


def test_the_policy_masks_only_the_tenants_it_names() -> None:
    policy = RedactionPolicy(frozenset({"acme"}), "US")
    assert policy.text("acme", "mail a@b.io") == "mail [EMAIL]"
    assert policy.text("other", "mail a@b.io") == "mail a@b.io"
    assert RedactionPolicy(frozenset({"*"})).applies("anyone")
    assert not RedactionPolicy().applies("acme")
