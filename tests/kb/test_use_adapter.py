"""kb_tune's second half: a linear adapter over the multilingual USE's frozen vectors, learned from
the knowledge base's phrasings and kept only when it answers the held-out questions USE serves
(Chinese here) better beyond noise.

The knowledge base is tests/data/zh_support_faq.csv: an online shop's support FAQ in Chinese, 16
intents with 16 phrasings each, confusable pairs on purpose (return vs exchange, refund status vs
refund method, track vs delivery time). As in test_kb_tune, "better" is made certain by first
switching to a version whose adapter is wrecked on purpose (a random map): the real switch path,
and a case a product meets."""

from __future__ import annotations

import csv
import io
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command

from chatbot.pipeline import answer_question
from kb import services
from kb.embedders import USE_ADAPTER_FILE, embedder_for, model_path_resolve
from kb.embedding_models import embedding_model_active, model_vectors_store
from kb.models import EmbeddingModel, IndexVersion, Variant
from kb.tuning import AdapterSettings, Phrasing, TuningSplit, adapter_apply, adapter_train, ranking_evaluate
from kb.tuning_runs import kb_tune
from tests.factories import entries_create, kb_embed_and_publish

ZH_FAQ = Path(__file__).resolve().parents[1] / "data" / "zh_support_faq.csv"


def zh_faq() -> dict[str, list[str]]:
    """Intent -> its phrasings, in file order."""
    intents: dict[str, list[str]] = defaultdict(list)
    with ZH_FAQ.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            intents[row["intent"]].append(row["text"])
    return dict(intents)


@pytest.fixture(autouse=True)
def _torch_runtime(settings):
    settings.KB_EMBEDDER_RUNTIME = "torch"  # as test_kb_tune: no ONNX export per version


@pytest.fixture
def zh_kb(transactional_db):
    intents = zh_faq()
    entries_create(
        [
            {
                "question": items[0],
                "answer": f"关于{name}的回答。",
                "category": name,
                "language": "zh",
                "variants": items[1:],
            }
            for name, items in intents.items()
        ]
    )
    kb_embed_and_publish()
    return intents


def test_the_fixture_is_what_the_tests_assume():
    intents = zh_faq()
    assert len(intents) == 16 and {len(items) for items in intents.values()} == {16}
    assert len({text for items in intents.values() for text in items}) == 256


def test_an_adapter_learns_entries_the_frozen_vectors_confuse():
    """Synthetic frozen vectors: each entry's phrasings share a direction, buried under noise that
    is the same for every entry in half the dimensions. A map trained on some phrasings ranks
    unseen ones better; the identity map changes nothing."""
    rng = np.random.default_rng(0)
    dim, entries, per_entry = 32, 10, 20
    signal = rng.normal(size=(entries, dim)) * np.r_[np.ones(4), np.zeros(dim - 4)]
    phrasings, vectors = [], []
    for entry in range(entries):
        for i in range(per_entry):
            noise = rng.normal(size=dim) * np.r_[np.zeros(4), np.ones(dim - 4)]
            vectors.append(signal[entry] + noise)
            phrasings.append(Phrasing(f"{entry}-{i}", entry))
    vectors = np.asarray(vectors, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    lookup = {p.text: v for p, v in zip(phrasings, vectors, strict=True)}
    split = TuningSplit(
        train=[p for p in phrasings if int(p.text.split("-")[1]) < 15],
        held_out=[p for p in phrasings if int(p.text.split("-")[1]) >= 15],
        out_of_scope=[],
    )
    train_vectors = np.vstack([lookup[p.text] for p in split.train])
    weight, run = adapter_train(train_vectors, split.train, settings=AdapterSettings(epochs=30, batch_size=10))
    assert run["steps"] > 0 and run["last_loss"] < run["first_loss"]

    def encoder(w):
        return lambda texts: adapter_apply(np.vstack([lookup[t] for t in texts]), w)

    before = ranking_evaluate(encoder(None), split)
    after = ranking_evaluate(encoder(weight), split)
    assert after.top1 > before.top1 + 0.2  # 0.26 -> 0.60 with this seed
    identity = ranking_evaluate(encoder(np.eye(dim, dtype=np.float32)), split)
    assert np.allclose(identity.best_scores, before.best_scores, atol=1e-6)


def _wrecked_adapter_version(with_english_model: bool) -> EmbeddingModel:
    """A version whose USE half goes through a ruinous map (saved as kb_tune saves a kept adapter),
    and, ``with_english_model``, an English model of its own (a copy of the shipped one's files, as
    a tuned version holds)."""
    from django.conf import settings

    directory = settings.KB_MODEL_DIR / "wrecked-adapter"
    if with_english_model:
        shutil.copytree(model_path_resolve(settings.KB_EMBEDDER_MODEL), directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Rank 2: every phrasing squeezed onto one plane (a full-rank random map would keep most angles).
    rng = np.random.default_rng(1)
    np.save(directory / USE_ADAPTER_FILE, (rng.normal(size=(512, 2)) @ rng.normal(size=(2, 512))).astype(np.float32))
    version = EmbeddingModel.objects.create(
        label="wrecked-adapter", directory="wrecked-adapter", parent=embedding_model_active()
    )
    model_vectors_store(model=version, embedder=embedder_for("wrecked-adapter"))
    return version


def _vectors() -> dict[int, bytes]:
    return {pk: bytes(v) for pk, v in Variant.objects.values_list("id", "embedding")}


@pytest.mark.parametrize("active_has_english_model", [False, True])
def test_a_better_adapter_goes_live_and_applies_to_phrasings_and_questions_alike(
    zh_kb, settings, active_has_english_model
):
    base = embedding_model_active()
    base_vectors = _vectors()
    question = "我的包裹现在到哪里了"
    wrecked = _wrecked_adapter_version(active_has_english_model)
    services.embedding_model_activate(model=wrecked, reason="a bad adapter goes live")
    assert _vectors() != base_vectors

    outcome = kb_tune()
    version = outcome.model
    assert outcome.switched, outcome.reason
    # No English phrasings: the English half is declined and says so; the adapter earned the switch.
    assert "English model: declined" in version.reason and "USE adapter held-out top-1" in version.reason
    adapter_scores = version.scores["use_adapter"]
    assert adapter_scores["compared_with"] == "wrecked-adapter"
    assert adapter_scores["tuned"]["top1"] > adapter_scores["active"]["top1"] and adapter_scores["p_top1"] < 0.05
    assert version.data["use_adapter"]["held_out"] >= 40
    assert "top1" not in version.scores  # nothing English was measured
    directory = settings.KB_MODEL_DIR / version.directory
    files = {path.name for path in directory.iterdir()}
    if active_has_english_model:
        # The active version's English model carries over (linked, not copied), its adapter does not.
        wrecked_dir = settings.KB_MODEL_DIR / wrecked.directory
        assert files == {path.name for path in wrecked_dir.iterdir()}
        assert (directory / "config.json").stat().st_ino == (wrecked_dir / "config.json").stat().st_ino
        assert not np.array_equal(np.load(directory / USE_ADAPTER_FILE), np.load(wrecked_dir / USE_ADAPTER_FILE))
    else:
        assert files == {USE_ADAPTER_FILE}  # the English half is the shipped model, not a copy of it

    live = IndexVersion.objects.latest("id")
    assert live.embedding_model == version and f"adapter:{version.label}" in live.embedder
    embedder = embedder_for(version.directory)
    # A stored phrasing and the same text asked as a question meet at cosine 1: both went through the map.
    text = zh_kb["track_order"][3]
    assert float(embedder.encode([text])[0] @ embedder.encode_query(text)) == pytest.approx(1.0, abs=1e-5)
    # ... and the map is really applied: the USE half differs from the shipped model's.
    shipped = embedder_for("")
    assert not np.allclose(embedder.encode([text])[0][384:], shipped.encode([text])[0][384:], atol=1e-3)
    assert np.allclose(embedder.encode(["track my order"])[0][:384], shipped.encode(["track my order"])[0][:384])
    answer = answer_question(question, llm_available=False)
    assert answer.decision.index_version == live.pk
    assert answer.hits[0].entry_id == Variant.objects.get(text=zh_kb["track_order"][0]).entry_id

    # Asked again from the command line: measured against the live adapter now, and reported.
    out = io.StringIO()
    call_command("kb_tune", "--no-switch", stdout=out, verbosity=0)
    report = out.getvalue()
    assert f"USE adapter: {version.data['use_adapter']['train_phrasings']} phrasings of 14 entries" in report
    assert f"  {version.label:12} top-1 " in report and "paired tests: top-1 p=" in report
    assert embedding_model_active() == version

    # Rollback: the shipped model's vectors, exactly as before.
    services.embedding_model_activate(model=base, reason="rollback")
    assert _vectors() == base_vectors


def test_too_few_chinese_phrasings_decline_the_adapter_and_say_why(db):
    entries_create()  # the shop's few English entries: neither half has enough to learn from
    kb_embed_and_publish()
    out = io.StringIO()
    call_command("kb_tune", stdout=out, verbosity=0)
    text = out.getvalue()
    assert "declined" in text and "English model:" in text and "USE adapter:" in text
    assert not EmbeddingModel.objects.exclude(label="base").exists()
