"""kb_tune end to end with the real models, database and index files: it declines a knowledge base
too small to learn from; a tuned model that is worse than the active one is refused and changes
nothing; a better one becomes a new version whose vectors are stored beside the current ones and goes
live atomically while chat keeps answering; switching back restores the previous vectors and index
exactly.

The knowledge base is a BANKING77 slice (12 intents, 25 phrasings each). A run tunes from the base
model and is compared with the *active* version, so "better" is made certain and cheap by first
switching to a version wrecked on purpose (trained with a learning rate far too high): the real
switch code path, and a case a product meets (a bad version live, tuning repairs it)."""

from __future__ import annotations

import csv
import io
import threading
import time

import numpy as np
import pytest
from django.core.management import call_command

from chatbot.pipeline import answer_question
from kb import services
from kb.embedders import embedder_for, model_path_resolve
from kb.embedding_models import embedding_model_active, model_vectors_store
from kb.models import EmbeddingModel, IndexVersion, PhrasingVector, Variant
from kb.selectors import current_index
from kb.tuning import TrainingSettings, contrastive_train
from kb.tuning_runs import english_phrasings, kb_tune
from tests.factories import entries_create, kb_embed_and_publish

INTENTS, PHRASINGS = 12, 25
GOOD = TrainingSettings(epochs=1, batch_size=11, learning_rate=3e-5)
WRECKING = TrainingSettings(epochs=1, batch_size=11, learning_rate=3e-3, hard_negatives=False)


@pytest.fixture(autouse=True)
def _torch_runtime(settings):
    """Tuned versions run on PyTorch here: the ONNX export of each new version (~30 s, once per
    version in production) would dominate these tests, and ONNX Runtime gives the same vectors."""
    settings.KB_EMBEDDER_RUNTIME = "torch"


@pytest.fixture
def banking_kb(transactional_db, banking77_train):
    """The slice as entries (first phrasing the question), embedded and published."""
    texts: dict[str, list[str]] = {}
    with banking77_train.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if len(texts) < INTENTS or row["category"] in texts:
                bucket = texts.setdefault(row["category"], [])
                if len(bucket) < PHRASINGS:
                    bucket.append(row["text"])
    entries_create(
        [
            {"question": items[0], "answer": f"About {name}.", "category": name, "variants": items[1:]}
            for name, items in texts.items()
        ]
    )
    kb_embed_and_publish()
    return texts


def _wrecked_version() -> EmbeddingModel:
    """A version trained to be bad, with its vectors stored (what kb_tune does for a good one)."""
    from django.conf import settings
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_path_resolve(settings.KB_EMBEDDER_MODEL)), device="cpu")
    contrastive_train(model, english_phrasings(), settings=WRECKING)
    model.save(str(settings.KB_MODEL_DIR / "wrecked"))
    version = EmbeddingModel.objects.create(label="wrecked", directory="wrecked", parent=embedding_model_active())
    model_vectors_store(model=version, embedder=embedder_for("wrecked"))
    return version


def _vectors() -> dict[int, bytes]:
    return dict(Variant.objects.values_list("id", "embedding"))


def test_a_knowledge_base_with_few_phrasings_is_declined(db):
    entries_create()  # four entries with three or four phrasings each
    kb_embed_and_publish()
    out = io.StringIO()
    call_command("kb_tune", stdout=out, verbosity=0)
    assert "declined" in out.getvalue() and "phrasings" in out.getvalue()
    assert not EmbeddingModel.objects.exclude(label="base").exists()


def test_a_worse_model_is_refused_and_changes_nothing(banking_kb, settings):
    before_vectors, before_index = _vectors(), IndexVersion.objects.count()
    out = io.StringIO()
    call_command("kb_tune", "--epochs", "1", "--batch-size", "11", "--learning-rate", "3e-3", stdout=out, verbosity=0)
    text = out.getvalue()
    assert "top-1" in text and "recall@5" in text and "MRR" in text and "paired tests" in text
    assert "kept the active model: English model not better than base beyond noise" in text
    # English phrasings only: nothing for an adapter over the multilingual model to be measured on.
    assert "USE adapter: declined: only 0 held-out phrasings are questions the multilingual model answers" in text
    version = EmbeddingModel.objects.exclude(label="base").get()
    assert version.state == EmbeddingModel.State.REFUSED
    assert version.scores["tuned"]["top1"] < version.scores["active"]["top1"]
    assert version.data["train_phrasings"] + version.data["held_out"] + version.data["out_of_scope"] == len(
        english_phrasings()
    )
    assert version.directory == "" and not (settings.KB_MODEL_DIR / version.label).exists()
    assert embedding_model_active().label == "base"
    assert _vectors() == before_vectors and IndexVersion.objects.count() == before_index
    with pytest.raises(ValueError, match="nothing to switch to"):
        services.embedding_model_activate(model=version, reason="try anyway")


def _same(vectors: dict, other: dict) -> bool:
    return {k: bytes(v) for k, v in vectors.items()} == {k: bytes(v) for k, v in other.items()}


def test_a_better_model_goes_live_atomically_and_switching_back_restores_everything(banking_kb, settings):
    base = embedding_model_active()
    base_vectors = _vectors()
    question = "My card still hasn't arrived, what should I do?"
    base_answer = answer_question(question, llm_available=False)

    wrecked = _wrecked_version()
    services.embedding_model_activate(model=wrecked, reason="a bad version goes live")
    wrecked_vectors = _vectors()
    assert not _same(wrecked_vectors, base_vectors)
    assert _same(dict(PhrasingVector.objects.filter(model=base).values_list("variant_id", "embedding")), base_vectors)

    answers, errors, stop = [], [], threading.Event()

    def keep_asking():
        from django.db import connection

        try:
            while not stop.is_set():
                answer = answer_question(question, llm_available=False)
                answers.append((answer.decision.index_version, answer.hits[0].entry_id if answer.hits else None))
                time.sleep(0.05)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        outcome = kb_tune(training=GOOD)
    finally:
        stop.set()
        asker.join(timeout=60)
    version = outcome.model
    assert outcome.switched, outcome.reason
    # Chat answered throughout, from the wrecked version's index and then the tuned one's.
    assert errors == [] and answers and all(entry is not None for _, entry in answers)
    live = IndexVersion.objects.latest("id")
    assert {index for index, _ in answers} <= set(IndexVersion.objects.values_list("id", flat=True))
    assert version.state == EmbeddingModel.State.ACTIVE and version.activated_at is not None
    scores = version.scores
    assert scores["compared_with"] == "wrecked"
    assert scores["tuned"]["top1"] > scores["active"]["top1"] and scores["p_top1"] < 0.05
    assert scores["tuned"]["f1"] > scores["active"]["f1"] and scores["p_f1"] < 0.05
    assert (settings.KB_MODEL_DIR / version.label / "config.json").exists()

    # The live index is of the tuned version's vectors; the others are stored beside them.
    assert live.embedding_model == version and version.label in live.embedder
    assert current_index.get().model_directory == version.directory
    assert set(Variant.objects.values_list("embedding_model", flat=True)) == {version.pk}
    archived = dict(PhrasingVector.objects.filter(model=wrecked).values_list("variant_id", "embedding"))
    assert _same(archived, wrecked_vectors)
    tuned_answer = answer_question(question, llm_available=False)
    assert tuned_answer.decision.index_version == live.pk
    assert tuned_answer.hits[0].entry_id == base_answer.hits[0].entry_id

    # Roll back to the base model: its vectors and an index of them, exactly as before.
    restored = services.embedding_model_activate(model=base, reason="rollback")
    assert embedding_model_active() == base and restored.embedding_model == base
    assert _same(_vectors(), base_vectors)
    again = answer_question(question, llm_available=False)
    assert again.decision.index_version == restored.pk
    assert [(h.entry_id, round(h.score, 5)) for h in again.hits] == [
        (h.entry_id, round(h.score, 5)) for h in base_answer.hits
    ]
    # ... and forward again, to the tuned vectors kept from the first switch (nothing re-embedded).
    tuned_vectors = dict(PhrasingVector.objects.filter(model=version).values_list("variant_id", "embedding"))
    services.embedding_model_activate(model=version, reason="forward again")
    assert _same(_vectors(), tuned_vectors)
    assert len(np.frombuffer(bytes(next(iter(tuned_vectors.values()))), dtype=np.float32)) == live.dimension
