"""Writes to the knowledge base: entries, their phrasings, embedding batches, index publishing,
and import uploads staged between their preview and the confirmation."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import PurePath

import numpy as np
from celery import current_app
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.db.models.functions import Length
from django.utils import timezone
from simple_history.utils import bulk_create_with_history

from kb.embedders import embedder_for
from kb.embedding_models import (
    BASE_LABEL,
    active_embedder,
    embedding_model_active,
    model_vectors_copy_in,
    model_vectors_copy_out,
    model_vectors_store,
)
from kb.entry_head import EntryHead, HeadFit, entry_head_fit, phrasing_head_rows, rerank_head_rows
from kb.keyword import keyword_index_from_texts
from kb.models import (
    EmbeddingModel,
    EmbeddingState,
    Entry,
    IndexVersion,
    IndexWriterLock,
    KbRevision,
    Variant,
    entry_phrasings,
    text_hash,
)
from kb.screening import entry_screen
from kb.text import text_clean
from kb.vector_index import build_index, choose_index_kind, write_index_file

logger = logging.getLogger(__name__)


class EntryInvalid(ValueError):
    """An entry's fields break a rule; the message says which."""


def _validate(*, question: str, answer: str, language: str, variants: list[str], category: str = "") -> None:
    if not question:
        raise EntryInvalid("question is empty")
    if len(question) > Entry._meta.get_field("question").max_length:
        raise EntryInvalid("question is longer than 500 characters")
    if not answer.strip():
        raise EntryInvalid("answer is empty")
    if len(answer) > Entry._meta.get_field("answer").max_length:
        raise EntryInvalid("answer is longer than 5000 characters")
    known = {code for code, _ in Entry._meta.get_field("language").choices}
    if language not in known:
        raise EntryInvalid(f"unknown language {language!r} (known: {', '.join(sorted(known))})")
    if len(category) > Entry._meta.get_field("category").max_length:
        raise EntryInvalid("category is longer than 100 characters")
    for text in variants:
        if len(text) > Variant._meta.get_field("text").max_length:
            raise EntryInvalid(f"phrasing is longer than 500 characters: {text[:40]!r}...")


def _translations_clean(translations, *, language: str) -> dict[str, str]:
    """An entry's answers in other languages, as stored: known languages other than the entry's
    own, cleaned as answers are, empty ones dropped."""
    if translations is None:
        return {}
    if not isinstance(translations, dict):
        raise EntryInvalid("translations must be an object of language code to answer")
    known = {code for code, _ in Entry._meta.get_field("language").choices}
    cleaned = {}
    for code, text in translations.items():
        if code not in known:
            raise EntryInvalid(f"translations: unknown language {code!r} (known: {', '.join(sorted(known))})")
        if not isinstance(text, str):
            raise EntryInvalid(f"translations: the {code} answer must be text")
        text = text_clean(text, multiline=True)
        if len(text) > Entry._meta.get_field("answer").max_length:
            raise EntryInvalid(f"translations: the {code} answer is longer than 5000 characters")
        if text and code != language:
            cleaned[code] = text
    return cleaned


def kb_changed_notify(*, entry_ids: Iterable[int] = ()) -> int:
    """Bump the KB revision and, once the transaction commits, ask a worker to embed what is
    dirty and publish a new index version (once per transaction, however many rows changed).
    The entries changed are stamped with the new revision, which is returned: they are searchable
    as they are now once an index version of that revision is live."""
    KbRevision.objects.get_or_create(id=1)
    KbRevision.objects.filter(id=1).update(value=F("value") + 1)
    # Read back in the same transaction: the row stays locked by the update until it commits.
    revision = KbRevision.objects.filter(id=1).values_list("value", flat=True).get()
    entry_ids = list(entry_ids)
    if entry_ids:
        Entry.objects.filter(id__in=entry_ids).update(changed_revision=revision)
    # Django keeps pending callbacks as (savepoint ids, func, robust); a rollback discards them,
    # so this check never suppresses the enqueue of a later transaction.
    if not any(item[1] is _enqueue_refresh for item in transaction.get_connection().run_on_commit):
        transaction.on_commit(_enqueue_refresh)
    return revision


# By name, as the beat schedule sends it: kb.tasks imports this module, so importing it back here
# would tie the two into a cycle.
KB_REFRESH_TASK = "kb.tasks.kb_refresh"


def kb_refresh_enqueue() -> None:
    """Ask for dirty phrasings to be embedded and a new index published: one kb_refresh, routed to
    the embedding queue (CELERY_TASK_ROUTES). How many batches then run at once is the embedding
    worker's own business: the one that takes it starts a chain per pool process (kb.tasks)."""
    # ignore_result as the task itself declares (CELERY_TASK_IGNORE_RESULT): nothing waits on it.
    current_app.send_task(KB_REFRESH_TASK, ignore_result=True)


def kb_tune_enqueue() -> None:
    """Queue a kb_tune run (kb.tasks.kb_tune_run) on the default queue; raises if the broker is down."""
    current_app.send_task("kb.tasks.kb_tune_run", ignore_result=True)


def _enqueue_refresh() -> None:
    try:
        kb_refresh_enqueue()
    except Exception:  # noqa: BLE001 - a down broker must not fail an edit that is saved
        # The edit is committed and its rows are dirty; the worker's start-up sweep (and the
        # next edit) picks them up.
        logger.exception("could not enqueue kb_refresh; dirty rows wait for the next sweep")


def kb_revision() -> int:
    """The current knowledge-base revision."""
    return KbRevision.objects.filter(id=1).values_list("value", flat=True).first() or 0


def _phrasings_wanted(question: str, variants: list[str]) -> list[str]:
    """The alternate phrasings an entry keeps of ``variants``: cleaned, in order, without empty
    ones, repeats or the question itself."""
    wanted = []
    for text in variants:
        text = text_clean(text)
        if text and text != question and text not in wanted:
            wanted.append(text)
    return wanted


def _entry_save(entry: Entry, *, phrasings: list[str] | None = None, **kwargs) -> None:
    """Save the entry; its history row records ``phrasings`` as its alternate phrasings (the ones
    about to be stored), or the stored ones when not given (kb.models.entry_history_snapshot)."""
    entry._history_phrasings = phrasings
    try:
        entry.save(**kwargs)
    finally:
        del entry._history_phrasings


def _entry_history_record(entry: Entry) -> None:
    """A history row for a change of the entry's phrasings alone, so that the entry's history
    shows it and a revert to an earlier row restores them."""
    _entry_save(entry, update_fields=["updated_at"])


def entry_variants_sync(*, entry: Entry, variants: list[str] | None = None, new_entry: bool = False) -> None:
    """Make the primary phrasing equal the question; with ``variants``, make the other phrasings
    exactly that list (kept ones keep their vectors, new ones start dirty)."""
    primary = entry.variants.filter(is_primary=True).first()
    duplicate_of_question = entry.variants.filter(is_primary=False, text=entry.question)
    duplicate_of_question.delete()
    if primary is None:
        Variant.objects.create(entry=entry, text=entry.question, is_primary=True)
    elif primary.text != entry.question:
        primary.text = entry.question
        primary.save()
    if variants is None:
        return
    wanted = _phrasings_wanted(entry.question, variants)
    entry.variants.filter(is_primary=False).exclude(text__in=wanted).delete()
    existing = set(entry.variants.values_list("text", flat=True))
    # One INSERT for all new phrasings (imports bring hundreds per entry); bulk_create skips
    # Variant.save(), so the hash is set here. A new entry's phrasings are part of the entry's own
    # creation record; phrasings added later get history rows of their own.
    new = [Variant(entry=entry, text=text, content_hash=text_hash(text)) for text in wanted if text not in existing]
    if new_entry:
        Variant.objects.bulk_create(new, batch_size=500)
    else:
        bulk_create_with_history(new, Variant, batch_size=500)


@transaction.atomic
def entry_create(
    *,
    question: str,
    answer: str,
    category: str = "",
    language: str = "en",
    is_published: bool = True,
    variants: list[str] | None = None,
    translations: dict[str, str] | None = None,
) -> Entry:
    """Create an entry with its phrasings (and its answer in other languages); embedding is queued
    once the transaction commits. Texts are stored as kb.text.text_clean leaves them (unwanted
    characters dropped)."""
    question, variants = text_clean(question), [text_clean(v) for v in variants or []]
    answer, category = text_clean(answer, multiline=True), text_clean(category)
    _validate(question=question, answer=answer, language=language, variants=variants, category=category)
    translations = _translations_clean(translations, language=language)
    held = "; ".join(entry_screen(question=question, answer=_answers_screened(answer, translations)))
    entry = Entry(
        question=question,
        answer=answer,
        translations=translations,
        category=category,
        language=language,
        is_published=is_published and not held,
        held_reason=held,
    )
    phrasings = _phrasings_wanted(question, variants)
    _entry_save(entry, phrasings=phrasings)
    entry_variants_sync(entry=entry, variants=phrasings, new_entry=True)
    entry.changed_revision = kb_changed_notify(entry_ids=[entry.pk])
    return entry


@transaction.atomic
def entry_update(
    *, entry: Entry, variants: list[str] | None = None, renamed: dict[int, str] | None = None, **fields
) -> Entry:
    """Change an entry's fields (and, when given, its full list of alternate phrasings). ``renamed``
    maps phrasing ids to their new texts (in ``variants`` too): those rows are edited in place,
    keeping their ids and history, rather than replaced. One history row records the lot."""
    allowed = {"question", "answer", "category", "language", "is_published", "translations"}
    unknown = set(fields) - allowed
    if unknown:
        raise EntryInvalid(f"unknown fields: {', '.join(sorted(unknown))}")
    cleaned = {}
    for name, value in fields.items():
        if name in {"question", "category"}:
            value = text_clean(value)
        elif name == "answer":
            value = text_clean(value, multiline=True)
        elif name == "translations":
            value = _translations_clean(value, language=fields.get("language", entry.language))
        cleaned[name] = value
    clean_variants = None if variants is None else [text_clean(v) for v in variants]
    if _unchanged(entry, cleaned, clean_variants):
        # Nothing to save: no history record, no new index version.
        return entry
    for name, value in cleaned.items():
        setattr(entry, name, value)
    _validate(
        question=entry.question,
        answer=entry.answer,
        language=entry.language,
        variants=clean_variants or [],
        category=entry.category,
    )
    # A translation into the entry's (new) language would shadow its own answer.
    entry.translations = {code: text for code, text in (entry.translations or {}).items() if code != entry.language}
    # Screened on every save: a held entry is published only once its text passes.
    entry.held_reason = "; ".join(
        entry_screen(question=entry.question, answer=_answers_screened(entry.answer, entry.translations))
    )
    if entry.held_reason:
        entry.is_published = False
    # The history row is written before the phrasings change: it is told what they will be.
    phrasings = _phrasings_wanted(
        entry.question, entry_phrasings(entry_id=entry.pk) if clean_variants is None else clean_variants
    )
    _entry_save(entry, phrasings=phrasings)
    if renamed:
        others = entry.variants.filter(is_primary=False)
        # Rows going away first, so a rename may take a text one of them had.
        others.exclude(pk__in=renamed).exclude(text__in=phrasings).delete()
        for variant in others.filter(pk__in=renamed):
            variant.text = text_clean(renamed[variant.pk])
            variant.save()  # dirty again when the text changed
    entry_variants_sync(entry=entry, variants=phrasings)
    entry.changed_revision = kb_changed_notify(entry_ids=[entry.pk])
    return entry


def entry_revert(*, entry: Entry, version_id: int, **fields) -> Entry:
    """Put an entry back as one of its history rows left it: ``fields`` (the revert form shows
    that row's values, which the editor may still change) and that row's alternate phrasings. A
    row written before phrasings were kept with the history (``phrasings`` None) keeps today's."""
    record = entry.history.filter(history_id=version_id).first()
    if record is None:
        raise EntryInvalid(f"entry {entry.pk} has no version {version_id}")
    return entry_update(entry=entry, variants=record.phrasings, **fields)


def _answers_screened(answer: str, translations: dict[str, str]) -> str:
    # Every answer a customer may receive is screened, in whichever language.
    return "\n".join([answer, *translations.values()])


def _unchanged(entry: Entry, fields: dict, variants: list[str] | None) -> bool:
    """Whether saving ``fields`` and ``variants`` would store what is stored already. Compared with
    the database row, not ``entry``: the admin hands over an instance its form has changed."""
    stored = Entry.objects.filter(pk=entry.pk).values(*fields).first() if entry.pk is not None else None
    if stored is None or any(stored[name] != value for name, value in fields.items()):
        return False
    if variants is None:
        return True
    current = Variant.objects.filter(entry=entry, is_primary=False).values_list("text", flat=True)
    return sorted(current) == sorted(v for v in variants if v)


@transaction.atomic
def entry_delete(*, entry: Entry) -> None:
    """Delete an entry; it leaves the answers with the next index version."""
    _entry_delete_with_history(entry)
    kb_changed_notify()


def _entry_delete_with_history(entry: Entry) -> None:
    # The deletion's history row keeps the phrasings (they are deleted before the entry is).
    entry._history_phrasings = entry_phrasings(entry_id=entry.pk)
    entry.delete()


PRIMARY_READ_ONLY = "this is the entry's primary phrasing (its question): edit the entry's question instead"


def variant_create(*, entry: Entry, text: str) -> Variant:
    """Add an alternate phrasing to an entry; it starts dirty and embedding is queued."""
    text = text_clean(text)
    _validate_phrasing(text)
    try:
        # A savepoint of its own, so a duplicate (unique constraint) leaves the connection usable.
        with transaction.atomic():
            variant = Variant.objects.create(entry=entry, text=text)
            _entry_history_record(entry)
            kb_changed_notify(entry_ids=[entry.pk])
    except IntegrityError as exc:
        raise EntryInvalid(f"the entry already has the phrasing {text!r}") from exc
    return variant


def variant_update(*, variant: Variant, text: str) -> Variant:
    """Change an alternate phrasing's text (Variant.save marks it dirty when the text changed)."""
    if variant.is_primary:
        raise EntryInvalid(PRIMARY_READ_ONLY)
    variant.text = text_clean(text)
    _validate_phrasing(variant.text)
    try:
        with transaction.atomic():
            variant.save()
            _entry_history_record(variant.entry)
            kb_changed_notify(entry_ids=[variant.entry_id])
    except IntegrityError as exc:
        raise EntryInvalid(f"the entry already has the phrasing {variant.text!r}") from exc
    return variant


def variant_delete(*, variant: Variant) -> None:
    """Delete an alternate phrasing; it leaves the answers with the next index version."""
    if variant.is_primary:
        raise EntryInvalid(PRIMARY_READ_ONLY)
    with transaction.atomic():
        variant.delete()
        _entry_history_record(variant.entry)
        kb_changed_notify(entry_ids=[variant.entry_id])


def _validate_phrasing(text: str) -> None:
    if not text:
        raise EntryInvalid("phrasing is empty")
    if len(text) > Variant._meta.get_field("text").max_length:
        raise EntryInvalid("phrasing is longer than 500 characters")


@transaction.atomic
def entries_delete(*, entry_ids: list[int]) -> int:
    """Delete many entries at once."""
    count = len(entry_ids)
    for entry in Entry.objects.filter(id__in=entry_ids):
        _entry_delete_with_history(entry)  # one by one, so each leaves a history record
    kb_changed_notify()
    return count


@transaction.atomic
def entries_set_published(*, entry_ids: list[int], published: bool) -> int:
    """Publish or unpublish many entries (entries held for review stay unpublished); the next
    index version follows. Returns how many changed."""
    entries = Entry.objects.filter(id__in=entry_ids).exclude(is_published=published)
    if published:
        entries = entries.filter(held_reason="")
    entries = list(entries)
    for entry in entries:
        entry.is_published = published
        entry.save(update_fields=["is_published", "updated_at"])
    kb_changed_notify(entry_ids=[entry.pk for entry in entries])
    return len(entries)


@transaction.atomic
def category_rename(*, old: str, new: str) -> int:
    """Give every entry of category ``old`` the category ``new`` (a merge when ``new`` is in use
    already; empty: no category); each entry keeps a history row. Returns how many changed."""
    new = text_clean(new)
    if len(new) > Entry._meta.get_field("category").max_length:
        raise EntryInvalid("category is longer than 100 characters")
    entries = list(Entry.objects.filter(category=old).exclude(category=new))
    for entry in entries:
        entry.category = new
        _entry_save(entry, update_fields=["category", "updated_at"])
    if entries:
        kb_changed_notify(entry_ids=[entry.pk for entry in entries])
    return len(entries)


@transaction.atomic
def entries_reembed(*, entry_ids: list[int]) -> int:
    """Embed these entries' phrasings again (failed ones included); returns how many were queued."""
    count = Variant.objects.filter(entry_id__in=entry_ids).update(
        is_dirty=True, embedded_hash="", embedding_state=EmbeddingState.PENDING, embedding_error=""
    )
    kb_changed_notify(entry_ids=entry_ids)
    return count


@dataclass(frozen=True)
class EmbedBatchResult:
    """What one embedding batch did."""

    selected: int
    embedded: int
    stale: int  # edited while being embedded: left dirty for the next batch
    remaining: int


def variants_embed_batch(*, limit: int | None = None) -> EmbedBatchResult:
    """Embed up to ``limit`` dirty phrasings in one model call and store their vectors.

    Safe to run twice or concurrently: the batch's rows are locked with SKIP LOCKED, so parallel
    workers take disjoint batches, and a vector is stored only if the phrasing's text hash is
    still the one that was embedded, so an edit made meanwhile stays dirty.
    """
    limit = limit or settings.KB_EMBED_BATCH_SIZE
    todo = Variant.objects.filter(is_dirty=True).exclude(embedding_state=EmbeddingState.FAILED)
    with transaction.atomic():
        # Similar lengths in one batch pad little: this alone makes batches ~2x faster than id order.
        claimed = todo.select_for_update(skip_locked=True).order_by(Length("text"), "id")
        batch = list(claimed.values_list("id", "text", "content_hash")[:limit])
        if not batch:
            return EmbedBatchResult(selected=0, embedded=0, stale=0, remaining=todo.count())
        try:
            model, embedder = active_embedder()
            vectors = embedder.encode([text for _, text, _ in batch])
        except Exception as exc:  # noqa: BLE001 - any model error is recorded on the rows, not lost
            logger.exception("embedding a batch of %d phrasings failed", len(batch))
            variants_mark_failed(variant_ids=[row[0] for row in batch], reason=f"{type(exc).__name__}: {exc}")
            return EmbedBatchResult(selected=len(batch), embedded=0, stale=0, remaining=todo.count())
        embedded = _store_vectors(batch, vectors, model)
    return EmbedBatchResult(selected=len(batch), embedded=embedded, stale=len(batch) - embedded, remaining=todo.count())


def _store_vectors(batch: list[tuple[int, str, str]], vectors: np.ndarray, model: EmbeddingModel) -> int:
    """Store each vector (of ``model``) whose phrasing still has the text that was embedded, while
    ``model`` is still the active version; return how many.

    One statement per row, sent together (executemany): the hash check sits in the UPDATE's
    WHERE, which the database re-evaluates under the row lock, so an editor's save lands either
    before (the stale vector is dropped) or after (and marks the row dirty again). Django's
    bulk_update builds CASE expressions that cost more than the model call for 64 rows."""
    table = connection.ops.quote_name(Variant._meta.db_table)
    models_table = connection.ops.quote_name(EmbeddingModel._meta.db_table)
    sql = (
        f"UPDATE {table} SET embedding = %s, embedded_hash = content_hash, is_dirty = %s, embedding_state = %s, "
        "embedding_error = '', embedded_at = %s, embedding_model_id = %s WHERE id = %s AND content_hash = %s "
        # A switch to another version committed while this batch was embedded: its vectors are of
        # the wrong model; the rows stay dirty and the next batch embeds them with the new one.
        f"AND EXISTS (SELECT 1 FROM {models_table} WHERE id = %s AND state = %s)"
    )
    now = timezone.now()
    active = EmbeddingModel.State.ACTIVE.value
    params = [
        (
            vector.astype(np.float32).tobytes(),
            False,
            EmbeddingState.EMBEDDED.value,
            now,
            model.pk,
            variant_id,
            content_hash,
            model.pk,
            active,
        )
        for (variant_id, _, content_hash), vector in zip(batch, vectors, strict=True)
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)
        return cursor.rowcount


def variants_reembed_all(*, batch_size: int | None = None, progress=None) -> int:
    """Embed every phrasing again, batch by batch, replacing vectors in place.

    Rows are never marked dirty on the way, so an index published meanwhile (by an editor's
    change) still holds every phrasing and chat keeps answering. Returns how many were stored."""
    batch_size = batch_size or settings.KB_EMBED_BATCH_SIZE
    model, embedder = active_embedder()
    stored, last_id = 0, 0
    while True:
        batch = list(
            Variant.objects.filter(id__gt=last_id).order_by("id").values_list("id", "text", "content_hash")[:batch_size]
        )
        if not batch:
            return stored
        vectors = embedder.encode([text for _, text, _ in batch])
        with transaction.atomic():
            stored += _store_vectors(batch, vectors, model)
        last_id = batch[-1][0]
        if progress is not None:
            progress(len(batch))


def variants_mark_failed(*, variant_ids: list[int], reason: str) -> int:
    """Record why embedding failed. The rows stay dirty but batches skip them until an edit or the
    re-embed action (entries_reembed) resets them, so one bad row cannot loop the worker."""
    return Variant.objects.filter(id__in=variant_ids, is_dirty=True).update(
        embedding_state=EmbeddingState.FAILED, embedding_error=reason[:2000]
    )


def index_publish(*, revision: int | None = None) -> IndexVersion:
    """Build the index (dense vectors and BM25 keywords) from every embedded phrasing of published
    entries and publish it as a new version. One writer at a time (row lock); the file is written
    to a temp name and renamed.

    ``revision`` is the KB revision the caller knows to be fully embedded; it defaults to the
    current one, which is right only when nothing is dirty (a command run by hand)."""
    with transaction.atomic():
        IndexWriterLock.objects.get_or_create(id=1)
        IndexWriterLock.objects.select_for_update().get(id=1)
        # Read under the lock: a switch of model versions (which holds it) is either all before or all after.
        model = embedding_model_active()
        embedder = embedder_for(model.directory)
        if revision is None:
            revision = kb_revision()
        rows = list(
            # A phrasing being re-embedded keeps its previous vector until the new one is stored,
            # so re-embedding never takes an entry out of the answers. Only the active version's
            # vectors: the index is searched with questions embedded by that version.
            Variant.objects.filter(entry__is_published=True, embedding__isnull=False, embedding_model=model)
            .order_by("id")
            .values_list("id", "entry_id", "embedding", "text")
        )
        variant_ids = np.array([row[0] for row in rows], dtype=np.int64)
        entry_ids = np.array([row[1] for row in rows], dtype=np.int64)
        vectors = (
            np.frombuffer(b"".join(bytes(row[2]) for row in rows), dtype=np.float32).reshape(len(rows), -1)
            if rows
            else np.zeros((0, embedder.dimension), dtype=np.float32)
        )
        if vectors.shape[1] != embedder.dimension:
            raise RuntimeError(
                f"stored vectors have dimension {vectors.shape[1]} but {embedder.name} gives "
                f"{embedder.dimension}: run `manage.py kb_reindex` after changing the embedder"
            )
        version = IndexVersion.objects.create(
            filename="pending",
            embedder=embedder.name,
            dimension=embedder.dimension,
            vector_count=len(rows),
            entry_count=len(set(entry_ids.tolist())),
            kb_revision=revision,
            embedding_model=model,
        )
        version.filename = f"index-v{version.pk:06d}.npz"
        kind = choose_index_kind(
            configured=settings.KB_INDEX_TYPE, vector_count=len(rows), hnsw_threshold=settings.KB_INDEX_HNSW_THRESHOLD
        )
        version.kind = kind
        index = build_index(vectors, variant_ids, embedder.dimension, kind=kind)
        # The keyword index is built from the same rows, so dense and keyword search always cover
        # the same phrasings of the same version.
        texts = [row[3] for row in rows]
        keyword = keyword_index_from_texts(texts=texts, variant_ids=variant_ids, entry_ids=entry_ids)
        head = None
        if kind == "flat" and settings.KB_ENTRY_CLASSIFIER:
            fitted = _entry_head_fit(embedder, vectors, entry_ids, texts, previous=_previous_index(version, model))
            head, version.entry_head = fitted.head, fitted.report
        write_index_file(
            settings.KB_INDEX_DIR / version.filename,
            index,
            variant_ids,
            entry_ids,
            keyword=keyword,
            texts=texts,
            head=head,
        )
        version.save(update_fields=["filename", "kind", "entry_head"])
    _remove_old_index_files(keep=settings.KB_INDEX_KEEP_VERSIONS)
    logger.info("published index %s", version)
    return version


def _previous_index(version: IndexVersion, model: EmbeddingModel) -> IndexVersion | None:
    """The index version published before ``version`` for the same model version, if its file is
    still there (its entry classifier can be refitted instead of chosen again)."""
    previous = IndexVersion.objects.filter(id__lt=version.id).order_by("-id").first()
    if previous is None or previous.embedding_model_id != model.id or previous.embedder != version.embedder:
        return None
    return previous if (settings.KB_INDEX_DIR / previous.filename).exists() else None


def _entry_head_fit(
    embedder, vectors: np.ndarray, entry_ids: np.ndarray, texts: list[str], *, previous: IndexVersion | None
) -> HeadFit:
    """The entry classifier for an index being published (kb.entry_head), learned from its
    phrasings as questions would be embedded. A failure to fit never stops the publication: the
    index then ranks by cosine alone, and the report says why."""
    reads = settings.KB_ENTRY_CLASSIFIER_INPUT
    rows, queries, row_phrasing = phrasing_head_rows(embedder, vectors, texts, reads)
    rerank_rows = rerank_head_rows(embedder, vectors, texts, reads)
    previous_head = None
    if previous is not None and previous.entry_head.get("kept"):
        try:
            with np.load(settings.KB_INDEX_DIR / previous.filename) as data:
                previous_head = EntryHead.from_arrays(data)
        except (OSError, ValueError, KeyError):
            logger.warning("could not read the entry classifier of %s; choosing again", previous, exc_info=True)
    try:
        return entry_head_fit(
            vectors,
            entry_ids,
            rows,
            queries,
            row_phrasing,
            previous=previous_head,
            previous_report=previous.entry_head if previous is not None else None,
            reads=reads,
            rerank_rows=rerank_rows,
        )
    except (ValueError, ArithmeticError, MemoryError) as exc:
        logger.exception("fitting the entry classifier failed; the index ranks by cosine")
        return HeadFit(None, {"kept": False, "reason": f"fitting failed: {exc}"})


def _remove_old_index_files(*, keep: int) -> None:
    current = set(IndexVersion.objects.order_by("-id").values_list("filename", flat=True)[:keep])
    for path in settings.KB_INDEX_DIR.glob("index-v*.npz"):
        if path.name not in current:
            path.unlink(missing_ok=True)


def index_publish_if_stale(*, revision: int) -> IndexVersion | None:
    """Publish a new index version recorded at ``revision`` unless the newest one already covers it.

    The caller reads ``revision`` *before* it finds no dirty phrasing. Reading it afterwards would
    let an edit that commits in between bump the revision while its phrasings are still
    unembedded: the index would claim that revision without them, and the run that embeds them
    would then see nothing stale and never publish (seen in CI as an entry that never became
    answerable)."""
    latest = IndexVersion.objects.order_by("-id").values_list("kb_revision", flat=True).first()
    if latest is not None and latest >= revision:
        return None
    return index_publish(revision=revision)


# --- Import uploads: kept between the preview and the confirmation ---------------------------
# The confirmation may reach another web process or host than the preview did, so the file lives
# in a storage they share (STORAGES["kb_imports"]), never in one process's memory or disk.

IMPORT_STORAGE = "kb_imports"
_IMPORT_TOKEN = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class StagedUpload:
    """An uploaded import file waiting for its preview to be confirmed."""

    token: str
    name: str  # ends with the uploaded file's suffix, which tells the readers its format
    content: bytes


def _import_storage():
    return storages[IMPORT_STORAGE]


def _import_staged_names() -> list[str]:
    try:
        return _import_storage().listdir("")[1]
    except FileNotFoundError:  # a file system storage before its first upload
        return []


def _import_staged_name(token: str) -> str | None:
    if not _IMPORT_TOKEN.fullmatch(token):
        return None
    return next((name for name in _import_staged_names() if name.partition(".")[0] == token), None)


def _import_expired(name: str) -> bool:
    age_limit = timedelta(seconds=settings.KB_IMPORT_STAGING_SECONDS)
    try:
        return _import_storage().get_modified_time(name) <= timezone.now() - age_limit
    except FileNotFoundError:  # removed meanwhile, by another process's confirm or prune
        return False


def import_upload_stage(*, name: str, content: bytes) -> str:
    """Keep an uploaded import file until its preview is confirmed; returns the token that names
    it. Uploads older than KB_IMPORT_STAGING_SECONDS (previews never confirmed) are removed first."""
    import_uploads_prune()
    token = secrets.token_hex(16)
    _import_storage().save(f"{token}{PurePath(name).suffix.lower()}", ContentFile(content))
    return token


def import_upload_get(*, token: str) -> StagedUpload | None:
    """The upload staged under ``token``, or None if the token is malformed, unknown or expired
    (an expired upload is removed)."""
    name = _import_staged_name(token)
    if name is None:
        return None
    if _import_expired(name):
        _import_storage().delete(name)
        return None
    try:
        with _import_storage().open(name, "rb") as staged:
            return StagedUpload(token=token, name=name, content=staged.read())
    except FileNotFoundError:  # confirmed meanwhile in another tab, maybe on another host
        return None


def import_upload_discard(*, token: str) -> None:
    """Remove the upload staged under ``token`` (confirmed, or given up); unknown tokens are ignored."""
    name = _import_staged_name(token)
    if name is not None:
        _import_storage().delete(name)


def import_uploads_prune() -> int:
    """Remove staged uploads older than KB_IMPORT_STAGING_SECONDS; returns how many."""
    expired = [name for name in _import_staged_names() if _import_expired(name)]
    for name in expired:
        _import_storage().delete(name)
    return len(expired)


def embedding_model_activate(*, model: EmbeddingModel, reason: str):
    """Make ``model`` the active version and publish an index of its vectors, atomically: until the
    transaction commits, every process keeps the previous version and its index. Phrasings without
    a vector of ``model`` keep their old one out of the index and are queued for embedding.
    Returns the published IndexVersion."""

    def check(model: EmbeddingModel) -> None:
        if model.state == EmbeddingModel.State.ACTIVE:
            raise ValueError(f"{model.label} is already the active model")
        if model.state in {EmbeddingModel.State.REFUSED, EmbeddingModel.State.FAILED, EmbeddingModel.State.TRAINING}:
            raise ValueError(f"{model.label} is {model.get_state_display().lower()}: there is nothing to switch to")
        if model.label != BASE_LABEL and not model.directory:
            raise ValueError(f"{model.label}'s files were not kept")

    check(EmbeddingModel.objects.get(pk=model.pk))
    # Before taking any lock: load the model (a version whose files are missing fails here, changing
    # nothing) and embed what has no vector of it yet (phrasings added or edited since its vectors
    # were stored), so that its index holds every phrasing.
    embedded = model_vectors_store(model=model, embedder=embedder_for(model.directory), only_missing=True)
    with transaction.atomic():
        IndexWriterLock.objects.get_or_create(id=1)
        IndexWriterLock.objects.select_for_update().get(id=1)
        model = EmbeddingModel.objects.get(pk=model.pk)
        check(model)  # again, under the lock: another switch may have run meanwhile
        previous = embedding_model_active()
        archived = model_vectors_copy_out(previous)
        current, outdated = model_vectors_copy_in(model)
        # Phrasings still holding the previous version's vectors (none stored for the new one).
        missing = Variant.objects.filter(embedding_model=previous).update(
            is_dirty=True, embedding_state=EmbeddingState.PENDING
        )
        EmbeddingModel.objects.filter(pk=previous.pk).update(state=EmbeddingModel.State.AVAILABLE)
        now = timezone.now()
        switches = [*model.data.get("switches", []), {"at": now.isoformat(), "from": previous.label, "why": reason}]
        EmbeddingModel.objects.filter(pk=model.pk).update(
            state=EmbeddingModel.State.ACTIVE, activated_at=now, data={**model.data, "switches": switches[-20:]}
        )
        version = index_publish()
    logger.info(
        "switched the embedding model %s -> %s (%d embedded first, %d copied in, %d outdated, %d missing, "
        "%d archived); index v%s",
        previous.label,
        model.label,
        embedded,
        current,
        outdated,
        missing,
        archived,
        version.pk,
    )
    kb_changed_notify()
    return version
