"""Threshold calibration: its vectorised decisions agree with chatbot.decisions.decide, and the
chosen point respects the caps."""

import io
import random

import pytest

from chatbot.decisions import Kind, Thresholds, decide
from chatbot.evaluation.calibration import ScoredQuestion, thresholds_calibrate, thresholds_evaluate


def _random_questions(seed: int, n: int = 400) -> list[ScoredQuestion]:
    rng = random.Random(seed)
    questions = []
    for _ in range(n):
        in_scope = rng.random() < 0.7
        scores = sorted((rng.uniform(0.1, 0.95) for _ in range(rng.randint(0, 5))), reverse=True)
        # In-scope questions tend to have a right entry on top when the score is high.
        correct = tuple(in_scope and rng.random() < (0.9 if i == 0 and s > 0.6 else 0.2) for i, s in enumerate(scores))
        questions.append(ScoredQuestion("en", tuple(scores), correct, in_scope))
    return questions


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(
    "thresholds",
    [Thresholds("en", 0.6, 0.5, 0.03), Thresholds("en", 0.7, 0.6, 0.1, 2), Thresholds("en", 0.5, 0.5, 0.0)],
)
def test_evaluation_agrees_with_decide(seed, thresholds):
    questions = _random_questions(seed)
    expected = {"answered": 0, "right": 0, "wrong": 0, "clarified": 0, "helpful": 0}
    for question in questions:
        decision = decide(list(question.scores), thresholds, llm_available=True)
        if decision.kind == Kind.FAQ:
            expected["answered"] += 1
            expected["right" if question.correct[0] else "wrong"] += 1
        elif decision.kind == Kind.CLARIFY:
            expected["clarified"] += 1
            expected["helpful"] += any(question.correct[i] for i in decision.options)
    metrics = thresholds_evaluate(questions, thresholds)
    assert (
        metrics.answered,
        metrics.right_answers,
        metrics.wrong_answers,
        metrics.clarified,
        metrics.helpful_clarifications,
    ) == (expected["answered"], expected["right"], expected["wrong"], expected["clarified"], expected["helpful"])
    in_scope = sum(q.in_scope for q in questions)
    assert metrics.recall == pytest.approx((expected["right"] + expected["helpful"]) / in_scope)
    assert metrics.wrong_rate == pytest.approx(expected["wrong"] / len(questions))


def test_calibration_respects_the_caps_and_beats_the_neighbours():
    questions = _random_questions(7, n=800)
    result = thresholds_calibrate(questions, language="en", max_wrong_rate=0.04, max_clarify_rate=0.05)
    assert result.feasible
    assert result.metrics.wrong_rate <= 0.04 and result.metrics.clarify_rate <= 0.05
    chosen = result.thresholds
    for answer in (chosen.answer - 0.05, chosen.answer + 0.05):
        other = thresholds_evaluate(questions, Thresholds("en", answer, min(answer, chosen.clarify), chosen.margin))
        assert other.f1 <= result.metrics.f1 or other.wrong_rate > 0.04 or other.clarify_rate > 0.05


def test_separable_scores_give_a_threshold_between_the_classes():
    right = [ScoredQuestion("en", (0.8 + i * 0.001, 0.3), (True, False), True) for i in range(50)]
    out = [ScoredQuestion("en", (0.4 + i * 0.001, 0.2), (False, False), False) for i in range(50)]
    result = thresholds_calibrate(right + out, language="en", max_wrong_rate=0.0)
    assert 0.45 <= result.thresholds.answer <= 0.8
    assert result.metrics.f1 == pytest.approx(1.0) and result.metrics.wrong_answers == 0


def test_impossible_cap_returns_the_safest_point():
    wrong = [ScoredQuestion("en", (0.9,), (False,), True) for _ in range(10)]
    result = thresholds_calibrate(wrong, language="en", max_wrong_rate=0.0, max_clarify_rate=0.0)
    assert result.metrics.wrong_answers == 0  # answers nothing rather than everything wrong


# --- manage.py kb_calibrate -------------------------------------------------------------------

LABELLED = """question,category
where is my parcel,orders
has my package shipped,orders
can I track my delivery,orders
how do I send an item back,returns
what's the return window,returns
do you take paypal,payment
which credit cards can I use,payment
I can't log in,account
password reset please,account
do you sell garden furniture,oos
what's the weather on Mars,oos
who won the match last night,oos
"""


@pytest.fixture
def labelled_shop(db, tmp_path):
    from tests.factories import entries_create, kb_embed_and_publish

    entries_create()
    kb_embed_and_publish()
    path = tmp_path / "labelled.csv"
    path.write_text(LABELLED)
    return path


def test_kb_calibrate_saves_thresholds_and_prints_the_figures(labelled_shop):
    from django.core.management import call_command

    from chatbot.models import DecisionThresholds

    out = io.StringIO()
    call_command("kb_calibrate", str(labelled_shop), min_questions=10, max_wrong_rate=0.0, stdout=out, verbosity=0)
    text = out.getvalue()
    assert "[en] 12 questions (9 in scope, 3 out)" in text and "saved the en thresholds" in text
    assert "precision" in text and "recall" in text and "F1" in text
    row = DecisionThresholds.objects.get(language="en")
    assert row.calibration["questions"] == 12 and row.calibration["metrics"]["wrong_answers"] == 0
    assert row.calibration["feasible"] is True and row.calibration["cap_confidence"] == 0.9
    # The saved thresholds give no wrong answer on these questions, as the cap demanded.
    from chatbot.evaluation.hit_testing import hit_test_rows
    from chatbot.evaluation.labelled import labelled_rows_read

    cases = hit_test_rows(labelled_rows_read(labelled_shop), llm_available=False).cases
    wrong = [c for c in cases if c.answer.source == "faq" and not c.answered_right]
    assert wrong == []


def test_kb_calibrate_dry_run_changes_nothing_and_reads_the_banking77_oos_layout(labelled_shop, tmp_path):
    from django.core.management import call_command

    from chatbot.models import DecisionThresholds

    folder = tmp_path / "dnnc"
    folder.mkdir()
    rows = [line.split(",") for line in LABELLED.strip().splitlines()[1:]]
    (folder / "seq.in").write_text("\n".join(q for q, _ in rows) + "\n")
    (folder / "label").write_text("\n".join(label for _, label in rows) + "\n")
    before = DecisionThresholds.objects.get(language="en")
    out = io.StringIO()
    call_command("kb_calibrate", str(folder), min_questions=10, dry_run=True, stdout=out, verbosity=0)
    assert "[en] 12 questions (9 in scope, 3 out)" in out.getvalue() and "dry run: nothing saved" in out.getvalue()
    after = DecisionThresholds.objects.get(language="en")
    assert (after.answer_threshold, after.clarify_margin, after.calibration) == (
        before.answer_threshold,
        before.clarify_margin,
        before.calibration,
    )


def test_kb_calibrate_refuses_a_missing_file(db, tmp_path):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="missing.csv"):
        call_command("kb_calibrate", str(tmp_path / "missing.csv"), verbosity=0)


def test_wrong_rate_bound_grows_with_fewer_questions_and_more_confidence():
    from chatbot.evaluation.calibration import wrong_rate_bound

    assert wrong_rate_bound(0.05, 2000, 0.5) == 0.05  # the measured rate alone
    assert wrong_rate_bound(0.0, 70) == 0.0  # none wrong: a small set is not ruled out by the bound
    # 90%: z = 1.2816; 5% of 2,000 questions -> +0.62 points.
    assert wrong_rate_bound(0.05, 2000) == pytest.approx(0.05 + 1.2816 * (0.05 * 0.95 / 2000) ** 0.5, abs=1e-5)
    assert wrong_rate_bound(0.05, 200) > wrong_rate_bound(0.05, 2000) > 0.05
    assert wrong_rate_bound(0.05, 2000, 0.99) > wrong_rate_bound(0.05, 2000, 0.9)


def test_the_wrong_answer_cap_holds_with_the_asked_confidence():
    from chatbot.evaluation.calibration import wrong_rate_bound

    questions = _random_questions(7, n=800)
    measured = thresholds_calibrate(questions, language="en", max_wrong_rate=0.04, cap_confidence=0.5)
    bounded = thresholds_calibrate(questions, language="en", max_wrong_rate=0.04)  # 90% by default
    assert measured.feasible and bounded.feasible
    # The measured rate alone goes right up to the cap; its bound is over it, so the default stays further under.
    assert wrong_rate_bound(measured.metrics.wrong_rate, 800) > 0.04 >= measured.metrics.wrong_rate
    assert wrong_rate_bound(bounded.metrics.wrong_rate, 800) <= 0.04
    assert bounded.metrics.wrong_rate < measured.metrics.wrong_rate
    assert bounded.metrics.f1 <= measured.metrics.f1


def test_kb_calibrate_refuses_a_cap_confidence_out_of_range(db, tmp_path):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--cap-confidence must be at least 0.5"):
        call_command("kb_calibrate", str(tmp_path / "any.csv"), cap_confidence=1.0, verbosity=0)
