"""Model versions: which one is active, and their vectors: a candidate's stored beside the active
ones, and the copies out and in that a switch between versions (also a rollback) is made of
(kb.services.embedding_model_activate).

The active version's vectors live on the phrasings (``Variant.embedding``, with
``Variant.embedding_model``), where the embedding pipeline and index publishing have always read
them. Every other version's vectors live in PhrasingVector. A switch, in one transaction under the
index writer lock: the active version's vectors are copied out to PhrasingVector, the new
version's copied in, and an index of the new version is published. Web processes load that index
together with its model (kb.vector_index.CurrentIndex warms the model first), so no question is
embedded by one version and searched in the other's vectors.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef

from kb.embedders import Embedder, embedder_for, process_model_set
from kb.models import EmbeddingModel, EmbeddingState, PhrasingVector, Variant

BASE_LABEL = "base"


def embedding_model_active() -> EmbeddingModel:
    """The active model version (the base model, created on first use, until a switch)."""
    active = EmbeddingModel.objects.filter(state=EmbeddingModel.State.ACTIVE).first()
    if active is not None:
        return active
    with transaction.atomic():
        base, _ = EmbeddingModel.objects.get_or_create(
            label=BASE_LABEL, defaults={"state": EmbeddingModel.State.ACTIVE, "reason": "the model shipped"}
        )
        if not EmbeddingModel.objects.filter(state=EmbeddingModel.State.ACTIVE).exists():
            EmbeddingModel.objects.filter(pk=base.pk).update(state=EmbeddingModel.State.ACTIVE)
            base.state = EmbeddingModel.State.ACTIVE
    return EmbeddingModel.objects.get(state=EmbeddingModel.State.ACTIVE)


def active_embedder() -> tuple[EmbeddingModel, Embedder]:
    """The active version and its embedder; this process's get_embedder() follows it from now on."""
    model = embedding_model_active()
    embedder = embedder_for(model.directory)
    process_model_set(model.directory)
    return model, embedder


def model_vectors_missing(model: EmbeddingModel):
    """The phrasings with no stored vector of ``model`` for their current text."""
    current = PhrasingVector.objects.filter(model=model, variant=OuterRef("pk"), content_hash=OuterRef("content_hash"))
    return Variant.objects.exclude(Exists(current))


def model_vectors_store(
    *,
    model: EmbeddingModel,
    embedder: Embedder,
    batch_size: int = 256,
    only_missing: bool = False,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Embed every phrasing (``only_missing``: those without a current vector of ``model``) with
    ``model`` (not the active one) into PhrasingVector, replacing vectors of older texts; returns how
    many were stored."""
    stored, last_id = 0, 0
    phrasings = model_vectors_missing(model) if only_missing else Variant.objects.all()
    while True:
        batch = list(
            phrasings.filter(id__gt=last_id).order_by("id").values_list("id", "text", "content_hash")[:batch_size]
        )
        if not batch:
            return stored
        vectors = embedder.encode([text for _, text, _ in batch])
        rows = [
            PhrasingVector(
                variant_id=variant_id,
                model=model,
                content_hash=content_hash,
                embedding=vector.astype(np.float32).tobytes(),
            )
            for (variant_id, _, content_hash), vector in zip(batch, vectors, strict=True)
        ]
        PhrasingVector.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["variant", "model"],
            update_fields=["content_hash", "embedding"],
        )
        stored += len(rows)
        last_id = batch[-1][0]
        if progress is not None:
            progress(len(batch))


def model_vectors_copy_out(model: EmbeddingModel) -> int:
    """The phrasings' vectors of ``model`` (the active one) into PhrasingVector."""
    rows = Variant.objects.filter(embedding_model=model, embedding__isnull=False).values_list(
        "id", "embedded_hash", "embedding"
    )
    copied = 0
    batch: list[PhrasingVector] = []
    for variant_id, embedded_hash, embedding in rows.iterator(chunk_size=2000):
        batch.append(
            PhrasingVector(variant_id=variant_id, model=model, content_hash=embedded_hash, embedding=bytes(embedding))
        )
        if len(batch) == 2000:
            copied += _upsert(batch)
            batch = []
    return copied + (_upsert(batch) if batch else 0)


def _upsert(rows: list[PhrasingVector]) -> int:
    PhrasingVector.objects.bulk_create(
        rows, update_conflicts=True, unique_fields=["variant", "model"], update_fields=["content_hash", "embedding"]
    )
    return len(rows)


def model_vectors_copy_in(model: EmbeddingModel) -> tuple[int, int]:
    """``model``'s stored vectors onto the phrasings; returns (current, outdated): a vector of an
    older text is copied too (the phrasing stays searchable) but the phrasing is marked dirty, so the
    worker embeds its current text with the new active model."""
    variant = connection.ops.quote_name(Variant._meta.db_table)
    vector = connection.ops.quote_name(PhrasingVector._meta.db_table)
    match = f"FROM {vector} pv WHERE pv.variant_id = {variant}.id AND pv.model_id = %s"
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {variant} SET embedding = (SELECT pv.embedding {match}), "
            f"embedded_hash = (SELECT pv.content_hash {match}), embedding_model_id = %s "
            f"WHERE EXISTS (SELECT 1 {match})",
            [model.pk, model.pk, model.pk, model.pk],
        )
        copied = cursor.rowcount
    outdated = (
        Variant.objects.filter(embedding_model=model)
        .exclude(embedded_hash=F("content_hash"))
        .update(is_dirty=True, embedding_state=EmbeddingState.PENDING)
    )
    return copied - outdated, outdated
