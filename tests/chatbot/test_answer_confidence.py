"""The answer confidence end to end, on a slice of BANKING77-OOS with the real embedder: kb_calibrate
fits it, live answers are decided by it and show it in their trace, it separates right answers from
out-of-scope and wrong ones better than the best score on questions it never saw, and a process
with another embedder falls back to the score."""

from __future__ import annotations

import html
import io
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command

from chatbot.decisions import Kind
from chatbot.evaluation.hit_testing import hit_test_rows
from chatbot.evaluation.labelled import labelled_rows_read
from chatbot.models import Conversation, DecisionThresholds
from chatbot.pipeline import answer_question
from chatbot.selectors import _thresholds_cache
from chatbot.services import BotReply, exchange_save

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "banking77-oos"
INTENTS = 12  # the knowledge base: the first intents (alphabetically) of BANKING77-OOS's 50
PHRASINGS = 40  # training questions per intent kept as its phrasings
OTHER_INTENTS = 8  # intents left out of the knowledge base: their questions are out of its scope
ID_OOS = 150  # in-domain out-of-scope questions per split


def _rows(folder: Path) -> list[dict]:
    return labelled_rows_read(folder)


def _split(split: str, kept: set[str], others: set[str]) -> list[dict]:
    """Labelled rows of one split: the kept intents' questions, the other intents' questions and a
    share of the in-domain out-of-scope ones, both labelled oos."""
    rows = []
    for row in _rows(DATA / split):
        category = row["category"]
        if category in kept:
            rows.append({"question": row["question"], "category": category})
        elif category in others:
            rows.append({"question": row["question"], "category": "oos"})
    rows += [{"question": row["question"], "category": "oos"} for row in _rows(DATA / "id-oos" / split)[:ID_OOS]]
    return rows


@pytest.fixture
def banking_slice(db, tmp_path):
    """The KB slice embedded and published, with labelled validation and test files."""
    import csv

    from tests.factories import entries_create, kb_embed_and_publish

    training = _rows(DATA / "train")
    intents = sorted({row["category"] for row in training})
    kept, others = set(intents[:INTENTS]), set(intents[INTENTS : INTENTS + OTHER_INTENTS])
    phrasings: dict[str, list[str]] = {}
    for row in training:
        if row["category"] in kept and len(phrasings.setdefault(row["category"], [])) < PHRASINGS:
            phrasings[row["category"]].append(row["question"])
    entries_create(
        [
            {"question": texts[0], "answer": f"About {name}.", "category": name, "variants": texts[1:]}
            for name, texts in sorted(phrasings.items())
        ]
    )
    kb_embed_and_publish()
    files = {}
    for split in ("valid", "test"):
        files[split] = tmp_path / f"{split}.csv"
        with files[split].open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["question", "category"])
            writer.writeheader()
            writer.writerows(_split(split, kept, others))
    _thresholds_cache.clear()
    yield files
    _thresholds_cache.clear()


def _auc(labels: list[bool], values: list[float]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, values))


def test_kb_calibrate_fits_the_confidence_and_live_answers_follow_it(banking_slice, settings):
    settings.CHATBOT_THRESHOLDS_CACHE_SECONDS = 0
    out = io.StringIO()
    call_command("kb_calibrate", str(banking_slice["valid"]), stdout=out, verbosity=0)
    text = out.getvalue()
    row = DecisionThresholds.objects.get(language="en")
    note = row.calibration["confidence"]
    assert "confidence: answer when P(right) >=" in text, text
    assert note["auc"] > note["score_auc"], note
    # Kept only when it beats the score out of fold (and the saved thresholds say which one decides).
    assert note["adopted"] == (note["metrics"]["f1"] > row.calibration["score_metrics"]["f1"]), note
    assert note["adopted"], f"the confidence did not beat the score on this slice: {text}"
    assert row.answer_confidence is not None and row.confidence_model["embedder"]
    assert row.calibration["metrics"] == note["metrics"]

    # Live answers on questions kb_calibrate never saw: decided by the confidence, traced.
    cases = hit_test_rows(labelled_rows_read(banking_slice["test"]), llm_available=False).cases
    decided = [case for case in cases if case.answer.kind != Kind.CLARIFY and case.answer.hits]
    assert decided
    for case in decided:
        trace = case.answer.decision.decision_json()["confidence"]
        assert trace["value"] == pytest.approx(case.answer.confidence, abs=1e-4)
        assert set(trace["features"]) == set(row.confidence_model["features"])
        if case.answer.kind == Kind.FAQ:
            assert case.answer.confidence >= row.answer_confidence
        else:
            assert case.answer.confidence < row.answer_confidence
    # It separates right answers from wrong and out-of-scope ones better than the best score.
    right = [case.in_scope and case.retrieved_right for case in decided]
    confidence_auc = _auc(right, [case.answer.confidence for case in decided])
    score_auc = _auc(right, [case.answer.score for case in decided])
    assert confidence_auc > score_auc, (confidence_auc, score_auc)


def test_another_embedder_falls_back_to_the_score_and_score_only_removes_the_model(banking_slice, settings):
    settings.CHATBOT_THRESHOLDS_CACHE_SECONDS = 0
    call_command("kb_calibrate", str(banking_slice["valid"]), stdout=io.StringIO(), verbosity=0)
    row = DecisionThresholds.objects.get(language="en")
    fitted = dict(row.confidence_model)
    row.confidence_model = {**fitted, "embedder": "some-other-model"}
    row.save()
    question = "I still have not received my new card"
    answer = answer_question(question, llm_available=False)
    trace = answer.decision.decision_json()["confidence"]
    assert trace["value"] is None and "some-other-model" in trace["unused"]
    assert answer.confidence is None and answer.features is None
    if answer.kind != Kind.CLARIFY:
        assert (answer.kind == Kind.FAQ) == (answer.score >= row.answer_threshold)

    row.confidence_model = fitted
    row.save()
    assert answer_question(question, llm_available=False).confidence is not None
    out = io.StringIO()
    call_command("kb_calibrate", str(banking_slice["valid"]), score_only=True, stdout=out, verbosity=0)
    row = DecisionThresholds.objects.get(language="en")
    assert (row.answer_confidence, row.confidence_model) == (None, {})
    assert "uses: the best score (--score-only)" in out.getvalue()
    answer = answer_question(question, llm_available=False)
    assert "confidence" not in answer.decision.decision_json() and answer.features is None


def _test_f1(banking_slice) -> tuple[float, float, list]:
    """F1 and wrong-answer rate of the live decisions on the test questions, and their cases."""
    from chatbot.evaluation.calibration import thresholds_evaluate
    from chatbot.selectors import thresholds_for

    cases = hit_test_rows(labelled_rows_read(banking_slice["test"]), llm_available=False).cases
    metrics = thresholds_evaluate([case.scored() for case in cases], thresholds_for(language="en"))
    return metrics.f1, metrics.wrong_rate, cases


def test_the_confidence_learns_from_labelled_out_of_scope_questions(banking_slice, settings, admin_client):
    from chatbot.confidence import OUT_OF_SCOPE_FEATURE
    from chatbot.models import OutOfScopeExamples
    from chatbot.selectors import _examples_cache
    from kb.embedders import get_embedder

    settings.CHATBOT_THRESHOLDS_CACHE_SECONDS = 0
    _examples_cache.clear()
    call_command("kb_calibrate", str(banking_slice["valid"]), without_examples=True, stdout=io.StringIO(), verbosity=0)
    assert OUT_OF_SCOPE_FEATURE not in DecisionThresholds.objects.get(language="en").confidence_model["features"]
    f1_without, _, _ = _test_f1(banking_slice)

    out = io.StringIO()
    call_command("kb_calibrate", str(banking_slice["valid"]), stdout=out, verbosity=0)
    row = DecisionThresholds.objects.get(language="en")
    note, model = row.calibration["confidence"], row.confidence_model
    assert "it reads nearness to" in out.getvalue(), out.getvalue()
    assert note["adopted"] and OUT_OF_SCOPE_FEATURE in model["features"]
    assert note["metrics"]["f1"] > note["metrics_without_examples"]["f1"], note
    examples = OutOfScopeExamples.objects.get(pk=model["examples"])
    labelled = [row_ for row_ in labelled_rows_read(banking_slice["valid"]) if row_["category"] == "oos"]
    assert sorted(examples.questions) == sorted(row_["question"] for row_ in labelled)
    assert note["out_of_scope_examples"] == len(labelled) and examples.embedder == model["embedder"]

    # On questions it never saw, it answers better than the model without the nearness.
    f1_with, wrong_with, cases = _test_f1(banking_slice)
    assert f1_with > f1_without, (f1_with, f1_without)
    assert wrong_with <= 0.08
    # Each live answer's nearness is its cosine to the nearest stored example.
    vectors = np.frombuffer(bytes(examples.vectors), dtype=np.float32).reshape(-1, examples.dimensions)
    decided = [case for case in cases if case.answer.features is not None][:20]
    questions = get_embedder().encode_queries([case.question for case in decided])
    for case, vector in zip(decided, questions, strict=True):
        nearest = float((vectors @ vector).max() / np.linalg.norm(vector))
        assert case.answer.features[OUT_OF_SCOPE_FEATURE] == pytest.approx(nearest, abs=0.02)
    # A question that is one of the examples is as near as can be, and is not answered from the FAQ.
    known = answer_question(labelled[0]["question"], llm_available=False)
    assert known.features[OUT_OF_SCOPE_FEATURE] == pytest.approx(1.0, abs=0.02) and known.kind != Kind.FAQ
    nearest = known.decision.decision_json()["confidence"]["nearest_out_of_scope"]
    assert examples.questions[nearest["row"]] == labelled[0]["question"] and nearest["examples"] == examples.pk
    # Ops reading the transcript see which labelled question it was like.
    conversation = Conversation.objects.create()
    reply = BotReply(
        source=known.source, text=known.text, record=known.decision, entry_id=known.entry_id, score=known.score
    )
    exchange_save(conversation=conversation, client_id="c1", customer_text=labelled[0]["question"], reply=reply)
    transcript = admin_client.get(f"/ops/conversations/{conversation.pk}/").content.decode()
    shown = html.escape(labelled[0]["question"])
    assert f'nearest labelled out-of-scope question (cosine 1.000): <q class="oos-nearest">{shown}</q>' in transcript

    # Admin: the thresholds page says what the confidence reads and links to the questions.
    page = admin_client.get(f"/admin/chatbot/decisionthresholds/{row.pk}/change/").content.decode()
    link = f"/admin/chatbot/outofscopeexamples/{examples.pk}/change/"
    assert f'<a href="{link}">{len(labelled)} labelled out-of-scope questions</a>' in page, page
    assert "kept with 90% confidence" in page
    listed = admin_client.get(link).content.decode()
    assert html.escape(labelled[0]["question"], quote=False) in listed

    # The examples gone (a database restored without them): the score decides, and says why.
    examples.delete()
    _examples_cache.clear()
    answer = answer_question("I still have not received my new card", llm_available=False)
    trace = answer.decision.decision_json()["confidence"]
    assert answer.confidence is None and "out-of-scope examples" in trace["unused"], trace
    if answer.kind != Kind.CLARIFY:
        assert (answer.kind == Kind.FAQ) == (answer.score >= row.answer_threshold)
