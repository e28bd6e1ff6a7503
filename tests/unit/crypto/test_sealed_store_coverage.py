"""The sealed store fails closed (docs/security.md, "Encryption at rest"): every public
attribute of the store is wrapped by SealedConversationStore, forwarded from its
reviewed PASS_THROUGH set, or withheld; a part of the store (`store.quota`, `store.trees`...)
is forwarded whole or wrapped method by method; nothing forwarded returns or writes personal
text (judged from the annotations, no database needed); anything else raises."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from chatplane.crypto.sealed_store import (
    CLEAR_TEXT,
    PASS_THROUGH,
    WITHHELD,
    SealedConversationStore,
)
from chatplane.persistence.store import base, handoff
from chatplane.persistence.store.postgres import PostgresConversationStore
from chatplane.persistence.store.tree_store import ConversationTrees

STORES: tuple[type, ...] = (PostgresConversationStore,)

# What the wrapper seals or opens, and the records made of them: a type that is one of these,
# or holds one in a field or a container at any depth, carries personal text.
PERSONAL_TEXT_TYPES: frozenset[type] = frozenset(
    {
        base.Message,
        base.Conversation,
        base.ConversationPage,
        base.ConversationHistory,
        base.Turn,
        base.TurnRequest,
        base.TurnReservation,
        base.Answer,
        base.Feedback,
        base.BranchMessage,
        base.PlacedMessage,
        base.ConversationTreePage,
        base.MessageFacts,
        handoff.HandoffState,
        handoff.HandoffPage,
        handoff.HandoffChange,
    }
)
PERSONAL_TEXT_NAMES = frozenset(t.__name__ for t in PERSONAL_TEXT_TYPES)
# A parameter (or a field of a parameter's record) with one of these names writes text.
TEXT_PARAMETERS = frozenset({"text", "title", "comment", "reason"})


def _parts(store: type) -> dict[str, type]:
    """The parts a class composes: its public attributes annotated with a class."""
    hints = typing.get_type_hints(store)
    return {n: t for n, t in hints.items() if not n.startswith("_") and isinstance(t, type)}


def _public_names(store: type) -> set[str]:
    return {name for name in dir(store) if not name.startswith("_")} | set(_parts(store))


def _wrapped() -> set[str]:
    return _public_names(SealedConversationStore) - {"keyring"}


def _hints(target: Any) -> dict[str, Any]:
    """Resolved annotations, or the strings as written when they do not resolve."""
    try:
        return typing.get_type_hints(target)
    except (NameError, TypeError):  # a name only imported for type checking
        return dict(getattr(target, "__annotations__", {}))


def _types_in(annotation: Any, seen: set[Any]) -> Iterator[Any]:
    """`annotation` and every type it names: generic arguments, unions, dataclass fields
    (recursively); unresolved strings as they are."""
    if isinstance(annotation, str) or annotation in seen:
        yield annotation
        return
    seen.add(annotation)
    yield annotation
    for argument in typing.get_args(annotation):
        yield from _types_in(argument, seen)
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        for field_type in _hints(annotation).values():
            yield from _types_in(field_type, seen)


def _carries_text(annotation: Any) -> bool:
    for found in _types_in(annotation, set()):
        if isinstance(found, str):
            if PERSONAL_TEXT_NAMES & set(re.findall(r"\w+", found)):
                return True
        elif found in PERSONAL_TEXT_TYPES:
            return True
    return False


def _text_fields(annotation: Any) -> set[str]:
    """Field names among TEXT_PARAMETERS of the records `annotation` names."""
    names: set[str] = set()
    for found in _types_in(annotation, set()):
        if dataclasses.is_dataclass(found) and isinstance(found, type):
            names |= {f.name for f in dataclasses.fields(found)} & TEXT_PARAMETERS
    return names


def _forwarded() -> dict[str, list[tuple[type, Callable[..., Any]]]]:
    """Every method the sealed store forwards, by name (`part.method` for a part's)."""
    found: dict[str, list[tuple[type, Callable[..., Any]]]] = {}
    for store in STORES:
        parts = _parts(store)
        for name in PASS_THROUGH:
            if name in parts:
                for method in _public_names(parts[name]):
                    found.setdefault(f"{name}.{method}", []).append(
                        (parts[name], getattr(parts[name], method))
                    )
            elif callable(member := getattr(store, name, None)):
                found.setdefault(name, []).append((store, member))
    return found


FORWARDED = _forwarded()


def test_every_public_attribute_of_the_store_is_wrapped_forwarded_or_withheld() -> None:
    decided = _wrapped() | PASS_THROUGH | WITHHELD
    for store in STORES:
        undecided = _public_names(store) - decided
        assert not undecided, (
            f"{store.__name__} has {sorted(undecided)}: wrap each in SealedConversationStore"
            " if it reads or writes personal text, else add it to PASS_THROUGH"
        )


def test_the_reviewed_sets_name_only_what_the_store_has() -> None:
    engines = set.union(*(_public_names(store) for store in STORES))
    assert not (PASS_THROUGH | WITHHELD) - engines, "stale names"
    assert not PASS_THROUGH & WITHHELD
    assert not _wrapped() & (PASS_THROUGH | WITHHELD)
    # Every wrapped method stands for one of the store (none wraps a misspelt name).
    assert not {n for n in _wrapped() if not all(n in _public_names(s) for s in STORES)}


def test_every_method_of_a_wrapped_part_is_wrapped() -> None:
    sealed_parts = _parts(SealedConversationStore)
    for store in STORES:
        for name, part in _parts(store).items():
            if name not in PASS_THROUGH:
                assert name in sealed_parts, (
                    f"{store.__name__}.{name} is neither forwarded nor wrapped"
                )
                unwrapped = _public_names(part) - _public_names(sealed_parts[name])
                assert not unwrapped, f"{name}: wrap {sorted(unwrapped)} in sealed_store.py"
    assert set(FORWARDED) >= CLEAR_TEXT


@pytest.mark.parametrize("name", sorted(FORWARDED))
def test_no_forwarded_method_returns_personal_text(name: str) -> None:
    for store, method in FORWARDED[name]:
        returns = _hints(method).get("return", inspect.signature(method).return_annotation)
        assert not _carries_text(returns), (
            f"{store.__name__}.{name} returns {returns!r}, which carries personal text:"
            " wrap it in SealedConversationStore to open it"
        )


@pytest.mark.parametrize("name", sorted(set(FORWARDED) - CLEAR_TEXT))
def test_no_forwarded_method_writes_personal_text(name: str) -> None:
    for store, method in FORWARDED[name]:
        hints = _hints(method)
        for parameter in inspect.signature(method).parameters.values():
            if parameter.name in ("self", "cls"):
                continue
            annotation = hints.get(parameter.name, parameter.annotation)
            where = f"{store.__name__}.{name}({parameter.name})"
            assert parameter.name not in TEXT_PARAMETERS, f"{where} takes text to write"
            assert not _carries_text(annotation), f"{where} takes personal text to write"
            assert not _text_fields(annotation), f"{where} takes a record with text fields"


def test_the_type_checks_recognise_personal_text() -> None:
    # The checks above must be able to fail: these are the shapes they look for.
    assert _carries_text(base.Message)
    assert _carries_text(dict[str, base.Message])
    assert _carries_text(list[base.MessageFacts] | None)
    assert _carries_text("list[Message]")  # an annotation that does not resolve
    assert _carries_text(typing.get_type_hints(ConversationTrees.skeleton)["return"])
    assert not _carries_text(base.ApiKey)
    assert _text_fields(base.Feedback) == {"comment"}


def test_anything_else_is_refused_by_name() -> None:
    inner = SimpleNamespace(handoffs=None, trees=None)
    sealed = SealedConversationStore(inner, object())  # type: ignore[arg-type]
    for name in ("list_everything_in_clear", "open", "path"):
        with pytest.raises(AttributeError, match=f"'{name}'.*PASS_THROUGH"):
            getattr(sealed, name)
