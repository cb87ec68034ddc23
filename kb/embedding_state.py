"""How far an entry is from being searchable, from the states of its phrasings' vectors: one rule
for the admin's column and filter and the API's ``embedding`` field."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Count, Exists, OuterRef, Q, QuerySet

from kb.models import EmbeddingState, Variant

_FAILED = Q(embedding_state=EmbeddingState.FAILED)
# A failed phrasing stays dirty, but it no longer waits for a vector: it waits for an editor.
_PENDING = Q(is_dirty=True) & ~_FAILED


def embedding_state(*, failed: int, pending: int) -> EmbeddingState:
    """An entry's state: failed if any phrasing failed, else pending while any waits for a vector,
    else embedded."""
    if failed:
        return EmbeddingState.FAILED
    if pending:
        return EmbeddingState.PENDING
    return EmbeddingState.EMBEDDED


def embedding_summary(variants: Iterable[Variant]) -> dict:
    """The state of an entry from its (loaded) phrasings, with the counts and distinct errors."""
    pending = failed = 0
    errors: list[str] = []
    for variant in variants:
        if variant.embedding_state == EmbeddingState.FAILED:
            failed += 1
            if variant.embedding_error and variant.embedding_error not in errors:
                errors.append(variant.embedding_error)
        elif variant.is_dirty:
            pending += 1
    state = embedding_state(failed=failed, pending=pending)
    return {"state": state.value, "pending": pending, "failed": failed, "errors": errors}


def entries_with_embedding_counts(queryset: QuerySet) -> QuerySet:
    """Entries annotated with ``n_variants``, ``n_pending`` and ``n_failed`` (for
    :func:`embedding_state`), counted in the database."""
    return queryset.annotate(
        n_variants=Count("variants", distinct=True),
        n_pending=Count(
            "variants",
            filter=Q(variants__is_dirty=True) & ~Q(variants__embedding_state=EmbeddingState.FAILED),
            distinct=True,
        ),
        n_failed=Count("variants", filter=Q(variants__embedding_state=EmbeddingState.FAILED), distinct=True),
    )


def entries_in_embedding_state(queryset: QuerySet, state: EmbeddingState | str) -> QuerySet:
    """The entries of ``queryset`` whose :func:`embedding_state` is ``state``."""
    failed = Exists(Variant.objects.filter(_FAILED, entry=OuterRef("pk")))
    pending = Exists(Variant.objects.filter(_PENDING, entry=OuterRef("pk")))
    if state == EmbeddingState.FAILED:
        return queryset.filter(failed)
    if state == EmbeddingState.PENDING:
        return queryset.filter(pending).exclude(failed)
    return queryset.exclude(failed).exclude(pending)
