"""How far an entry is from being searchable: the states of its phrasings' vectors, and whether
the live index version holds the entry as it is now. One rule for the admin's column and filter,
the import progress view and the API's ``embedding`` field.

"Embedded" means searchable: every phrasing has its vector *and* the newest index version covers
the entry's last change (``Entry.changed_revision`` against ``IndexVersion.kb_revision``). Vectors
are stored a while before the index that holds them is published; until then the entry is pending."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Subquery

from kb.models import EmbeddingState, IndexVersion, Variant

_FAILED = Q(embedding_state=EmbeddingState.FAILED)
# A failed phrasing stays dirty, but it no longer waits for a vector: it waits for an editor.
_PENDING = Q(is_dirty=True) & ~_FAILED


def live_revision() -> int | None:
    """The KB revision the newest index version covers (None: nothing is published yet)."""
    return IndexVersion.objects.order_by("-id").values_list("kb_revision", flat=True).first()


def waiting_for_index(changed_revision: int, live: int | None) -> bool:
    """Whether an entry changed at ``changed_revision`` is not yet in the live index as it is now."""
    return live is None or changed_revision > live


def embedding_state(*, failed: int, pending: int, unindexed: bool = False) -> EmbeddingState:
    """An entry's state: failed if any phrasing failed, else pending while any waits for a vector
    or the live index does not hold its last change yet (``unindexed``), else embedded."""
    if failed:
        return EmbeddingState.FAILED
    if pending or unindexed:
        return EmbeddingState.PENDING
    return EmbeddingState.EMBEDDED


def embedding_summary(variants: Iterable[Variant], *, unindexed: bool = False) -> dict:
    """The state of an entry from its (loaded) phrasings, with the counts and distinct errors;
    ``in_index`` says whether the live index holds the entry as it is now."""
    pending = failed = 0
    errors: list[str] = []
    for variant in variants:
        if variant.embedding_state == EmbeddingState.FAILED:
            failed += 1
            if variant.embedding_error and variant.embedding_error not in errors:
                errors.append(variant.embedding_error)
        elif variant.is_dirty:
            pending += 1
    state = embedding_state(failed=failed, pending=pending, unindexed=unindexed)
    return {"state": state.value, "pending": pending, "failed": failed, "in_index": not unindexed, "errors": errors}


def entries_with_embedding_counts(queryset: QuerySet) -> QuerySet:
    """Entries annotated with ``n_variants``, ``n_pending``, ``n_failed`` and ``live`` (the live
    index's revision) for :func:`embedding_state`, counted in the database."""
    return queryset.annotate(
        live=Subquery(IndexVersion.objects.order_by("-id").values("kb_revision")[:1]),
        n_variants=Count("variants", distinct=True),
        n_pending=Count(
            "variants",
            filter=Q(variants__is_dirty=True) & ~Q(variants__embedding_state=EmbeddingState.FAILED),
            distinct=True,
        ),
        n_failed=Count("variants", filter=Q(variants__embedding_state=EmbeddingState.FAILED), distinct=True),
    )


def _unindexed(live: int | None) -> Q:
    return Q() if live is None else Q(changed_revision__gt=live)


def entries_in_embedding_state(queryset: QuerySet, state: EmbeddingState | str) -> QuerySet:
    """The entries of ``queryset`` whose :func:`embedding_state` is ``state``."""
    return _entries_in_state(queryset, state, live_revision())


def _entries_in_state(queryset: QuerySet, state: EmbeddingState | str, live: int | None) -> QuerySet:
    failed = Exists(Variant.objects.filter(_FAILED, entry=OuterRef("pk")))
    pending = Exists(Variant.objects.filter(_PENDING, entry=OuterRef("pk")))
    if state == EmbeddingState.FAILED:
        return queryset.filter(failed)
    if live is None:  # nothing published: nothing is searchable yet
        return queryset.exclude(failed) if state == EmbeddingState.PENDING else queryset.none()
    if state == EmbeddingState.PENDING:
        return queryset.filter(pending | _unindexed(live)).exclude(failed)
    return queryset.exclude(failed).exclude(pending).exclude(_unindexed(live))


def embedding_counts(queryset: QuerySet) -> dict[str, int]:
    """How many of the entries of ``queryset`` are in each state (the import progress view)."""
    live = live_revision()
    return {state.value: _entries_in_state(queryset, state, live).count() for state in EmbeddingState}
