"""Knowledge-base data: FAQ entries, their phrasings (each embedded as its own vector) and the
published versions of the vector index. The database is the source of truth for vectors."""

import hashlib
import uuid

from django.conf import settings
from django.db import models
from django.dispatch import receiver
from simple_history.models import HistoricalRecords
from simple_history.signals import pre_create_historical_record

from kb.text import text_normalise

# Pipeline bookkeeping changes on every embedding run; history keeps what editors changed.
PIPELINE_FIELDS = [
    "content_hash",
    "is_dirty",
    "embedding",
    "embedded_hash",
    "embedding_state",
    "embedding_error",
    "embedded_at",
    "embedding_model",
]
EDITORS_GROUP = "KB editors"


class Language(models.TextChoices):
    ENGLISH = "en", "English"
    CHINESE = "zh", "Chinese"


# Import/export columns of an entry's answers for questions in each language (Entry.translations).
TRANSLATION_COLUMNS = {f"answer_{code}": code for code in Language.values}


class EntryHistorySnapshot(models.Model):
    """Columns an entry's history rows add to its own fields: the alternate phrasings as they were
    after that change, so that a revert restores them with the question and answer."""

    # None on rows written before phrasings were kept with the entry's history.
    phrasings = models.JSONField(null=True, blank=True, editable=False)

    class Meta:
        abstract = True


class Entry(models.Model):
    """One FAQ entry: a canonical question, its answer and where it belongs."""

    question = models.CharField(max_length=500)
    answer = models.TextField(max_length=5000)
    # The answer for questions asked in other languages than the entry's: {language code: answer}.
    translations = models.JSONField("answers in other languages", default=dict, blank=True)
    category = models.CharField(max_length=100, blank=True, db_index=True)
    language = models.CharField(max_length=8, choices=Language.choices, default=Language.ENGLISH)
    is_published = models.BooleanField("published", default=True, db_index=True)
    # Why the entry is held unpublished for review (kb.screening), empty when it is not.
    held_reason = models.TextField("held for review", blank=True, default="")
    # The KB revision of the entry's last change (its phrasings' too): the entry is searchable as it
    # is now once the live index version covers that revision (kb.embedding_state).
    changed_revision = models.PositiveBigIntegerField(default=0, db_index=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    history = HistoricalRecords(bases=[EntryHistorySnapshot], excluded_fields=["changed_revision"])

    class Meta:
        verbose_name_plural = "entries"
        ordering = ["id"]

    def __str__(self) -> str:
        return self.question

    def answer_for(self, language: str) -> str:
        """The answer for a question asked in ``language``: its translation when there is one."""
        return answer_for(self.answer, self.translations, language)


def answer_for(answer: str, translations: dict | None, language: str) -> str:
    """``answer``, or its translation into ``language`` when the entry has one."""
    return (translations or {}).get(language) or answer


class EmbeddingState(models.TextChoices):
    PENDING = "pending", "Pending"
    EMBEDDED = "embedded", "Embedded"
    FAILED = "failed", "Failed"


def text_hash(text: str) -> str:
    """Hash of a phrasing's text; a vector is current only while this hash is unchanged."""
    return hashlib.sha256(text_normalise(text).encode("utf-8")).hexdigest()


class EmbeddingModel(models.Model):
    """A version of the English embedding model: the one shipped (``base``) or one that ``kb_tune``
    trained on the knowledge base's phrasings. Exactly one is active: the worker embeds phrasings
    with it and every published index is built from its vectors; the vectors of other versions are
    kept (PhrasingVector) so that switching back is a copy, not a re-embedding."""

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        AVAILABLE = "available", "Available (can be switched to)"
        REFUSED = "refused", "Refused (not better than the active model)"
        TRAINING = "training", "Training"
        FAILED = "failed", "Failed"

    label = models.CharField(max_length=40, unique=True)
    # Under settings.KB_MODEL_DIR; empty for the base model (settings.KB_EMBEDDER_MODEL).
    directory = models.CharField(max_length=200, blank=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    state = models.CharField(max_length=10, choices=State.choices, default=State.AVAILABLE)
    reason = models.TextField(blank=True)  # why kb_tune switched to it, or refused it
    scores = models.JSONField(default=dict, blank=True)  # held-out base vs tuned, paired tests
    data = models.JSONField(default=dict, blank=True)  # what it was trained on: entries, phrasings, split
    training_seconds = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name = "embedding model version"
        constraints = [
            models.UniqueConstraint(
                fields=["state"], condition=models.Q(state="active"), name="kb_embeddingmodel_one_active"
            )
        ]

    def __str__(self) -> str:
        return f"{self.label} ({self.state})"


class Variant(models.Model):
    """One phrasing of an entry's question (the main question is the primary variant)."""

    entry = models.ForeignKey(Entry, on_delete=models.CASCADE, related_name="variants")
    text = models.CharField(max_length=500)
    is_primary = models.BooleanField(default=False)
    content_hash = models.CharField(max_length=64, editable=False)
    # Dirty means "the stored vector (if any) is not for the current text"; indexed because the
    # worker selects on it in every batch.
    is_dirty = models.BooleanField(default=True, db_index=True, editable=False)
    embedding = models.BinaryField(null=True, editable=False)
    embedded_hash = models.CharField(max_length=64, blank=True, editable=False)
    embedding_state = models.CharField(
        max_length=10, choices=EmbeddingState.choices, default=EmbeddingState.PENDING, editable=False
    )
    embedding_error = models.TextField(blank=True, editable=False)
    embedded_at = models.DateTimeField(null=True, editable=False)
    # The model version ``embedding`` is a vector of (null: never embedded).
    embedding_model = models.ForeignKey(
        EmbeddingModel, null=True, blank=True, on_delete=models.PROTECT, related_name="+", editable=False
    )
    history = HistoricalRecords(excluded_fields=PIPELINE_FIELDS)

    class Meta:
        ordering = ["entry_id", "-is_primary", "id"]
        verbose_name = "phrasing"
        constraints = [
            models.UniqueConstraint(fields=["entry", "text"], name="kb_variant_unique_text_per_entry"),
        ]

    def __str__(self) -> str:
        return self.text

    def save(self, *args, **kwargs):
        # Keep the hash and dirty flag derived from the text on every write path (services,
        # admin inlines, shell), so no edit can leave a stale vector looking current.
        self.content_hash = text_hash(self.text)
        if self.content_hash != self.embedded_hash:
            self.is_dirty = True
            self.embedding_state = EmbeddingState.PENDING
        super().save(*args, **kwargs)


def entry_phrasings(*, entry_id: int | None) -> list[str]:
    """An entry's alternate phrasings as stored, oldest first (none for an entry not saved yet)."""
    if entry_id is None:
        return []
    rows = Variant.objects.filter(entry_id=entry_id, is_primary=False).order_by("id")
    return list(rows.values_list("text", flat=True))


@receiver(pre_create_historical_record)
def entry_history_snapshot(sender, instance, history_instance, **kwargs):
    """Store the entry's alternate phrasings with each of its history rows. kb.services sets
    ``_history_phrasings`` when the row is written before the phrasings change (creation, an update
    that replaces them, a deletion); otherwise they are read as they are now."""
    if not isinstance(instance, Entry):
        return
    phrasings = getattr(instance, "_history_phrasings", None)
    history_instance.phrasings = entry_phrasings(entry_id=instance.pk) if phrasings is None else phrasings


class PhrasingVector(models.Model):
    """A phrasing's vector from a model version that is not the active one: a tuned version's
    vectors before the switch, and the previous version's after it (what a rollback copies back)."""

    variant = models.ForeignKey(Variant, on_delete=models.CASCADE, related_name="+")
    model = models.ForeignKey(EmbeddingModel, on_delete=models.CASCADE, related_name="vectors")
    content_hash = models.CharField(max_length=64)  # the text the vector was computed from
    embedding = models.BinaryField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["variant", "model"], name="kb_phrasingvector_one_per_model")]

    def __str__(self) -> str:
        return f"phrasing {self.variant_id} under {self.model_id}"


class IndexVersion(models.Model):
    """A published FAISS index file; the highest id is the one every web process serves."""

    filename = models.CharField(max_length=200)
    embedder = models.CharField(max_length=200)
    dimension = models.PositiveIntegerField()
    vector_count = models.PositiveIntegerField()
    entry_count = models.PositiveIntegerField()
    kb_revision = models.PositiveBigIntegerField(default=0)
    kind = models.CharField(max_length=10, default="flat")  # flat (exact) or hnsw (approximate)
    # The model version whose vectors it holds (web processes embed questions with it); null in
    # versions published before model versions existed (the base model).
    embedding_model = models.ForeignKey(
        EmbeddingModel, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # What publishing learned about the entry classifier (kb.entry_head.entry_head_fit's report):
    # whether it ranks this version, its weight, held-out top-1 with and without it, or why not.
    entry_head = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"v{self.pk} ({self.vector_count} vectors)"


class IndexWriterLock(models.Model):
    """A single row locked with SELECT ... FOR UPDATE so only one process writes the index."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)

    def __str__(self) -> str:
        return "index writer lock"


class KbRevision(models.Model):
    """A counter bumped by every knowledge-base change; an index built at an older revision is stale."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    value = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"KB revision {self.value}"


class ImportJob(models.Model):
    """An import too large for a web request (kb.import_jobs), run by Celery in bounded batches;
    its state and progress are what the admin page and the API show."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    file_name = models.CharField(max_length=255)
    dry_run = models.BooleanField(default=False)
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED, db_index=True)
    rows_total = models.PositiveIntegerField(null=True, blank=True)  # known once the file is read
    rows_done = models.PositiveIntegerField(default=0)
    created = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    error_count = models.PositiveIntegerField(default=0)  # every row error
    errors = models.JSONField(default=list, blank=True)  # the first kb.importing.MAX_ERRORS_SHOWN
    detail = models.TextField(blank=True)  # why a failed job stopped (the file's problem)
    unpublished = models.BooleanField(default=False)  # every row imported unpublished
    # A dry run's first rows as kb.importing.PlanRow dicts (the preview), and how many rows of the
    # whole file have an answer that looks like no answer.
    preview = models.JSONField(default=list, blank=True)
    warning_count = models.PositiveIntegerField(default=0)
    # The entries an import created or updated: its progress view follows them until searchable.
    entry_ids = models.JSONField(default=list, blank=True)
    # The upload, until its rows are staged (a dry run's until it is confirmed or expires): in the
    # database, which every web process and worker shares, wherever they run.
    content = models.BinaryField(blank=True, default=b"", editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{'dry run' if self.dry_run else 'import'} of {self.file_name} ({self.state})"

    @property
    def finished(self) -> bool:
        return self.state in {self.State.DONE, self.State.FAILED}


class ImportJobRow(models.Model):
    """An entry row of an import job, checked and waiting to be saved; deleted once it is."""

    job = models.ForeignKey(ImportJob, on_delete=models.CASCADE, related_name="rows")
    number = models.PositiveIntegerField()  # from 1, as the row errors count
    entry_fields = models.JSONField(default=dict)  # as kb.importing.entry_rows_checked gives them
    error = models.TextField(blank=True)  # the rule the row breaks, known before saving

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "number"], name="kb_importjobrow_job_number")]

    def __str__(self) -> str:
        return f"row {self.number} of {self.job_id}"
