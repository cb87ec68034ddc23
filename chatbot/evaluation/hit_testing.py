"""Hit testing: what the bot would answer, through the very pipeline live chat uses."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field

from chatbot.decisions import Kind, score_verdict
from chatbot.evaluation.calibration import ScoredQuestion
from chatbot.evaluation.labelled import is_out_of_scope
from chatbot.pipeline import Answer, answer_question
from kb.exporting import csv_cell_safe
from kb.models import Entry, Variant
from kb.text import text_key

# How a labelled question went wrong, in the order the report lists them.
WRONG_ANSWER = "wrong answer"  # answered from the FAQ, with an entry that was not expected
DID_YOU_MEAN = "did you mean"  # offered a choice of entries instead of answering
FALLBACK = "fallback"  # not answered from the FAQ: the LLM or the hand-off
FAILURE_KINDS = (WRONG_ANSWER, DID_YOU_MEAN, FALLBACK)
ANSWER_START_CHARS = 140


@dataclass(frozen=True)
class HitTestCase:
    """One labelled question and what the bot did with it."""

    question: str
    expected: str
    expected_entry_ids: frozenset[int]
    answer: Answer

    @property
    def top_entry_id(self) -> int | None:
        """The best retrieved entry, if anything was retrieved."""
        return self.answer.hits[0].entry_id if self.answer.hits else None

    @property
    def in_scope(self) -> bool:
        """False for a question labelled out of scope: no entry should answer it."""
        return bool(self.expected_entry_ids)

    @property
    def retrieved_right(self) -> bool:
        """The best retrieved entry is an expected one."""
        return self.top_entry_id in self.expected_entry_ids

    def scored(self) -> ScoredQuestion:
        """The case as chatbot.evaluation.calibration reads it."""
        return ScoredQuestion(
            language=self.answer.language,
            scores=tuple(hit.score for hit in self.answer.hits),
            correct=tuple(hit.entry_id in self.expected_entry_ids for hit in self.answer.hits),
            in_scope=self.in_scope,
            features=self.answer.features,
            confidence=self.answer.confidence,
        )

    @property
    def answered_right(self) -> bool:
        """The bot answered from the FAQ, with an expected entry."""
        return self.answer.source == "faq" and self.answer.entry_id in self.expected_entry_ids

    @property
    def failure(self) -> str | None:
        """How the bot failed this question (one of FAILURE_KINDS), None when it did right: an
        in-scope question answered from an expected entry, an out-of-scope one not answered."""
        answered = self.answer.source == "faq"
        if not self.in_scope:
            return WRONG_ANSWER if answered else None
        if self.answered_right:
            return None
        if answered:
            return WRONG_ANSWER
        return DID_YOU_MEAN if self.answer.kind == Kind.CLARIFY else FALLBACK


@dataclass
class HitTestReport:
    """Accuracy over a labelled file and the cases that went wrong."""

    cases: list[HitTestCase] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Questions asked (rows with errors are not)."""
        return len(self.cases)

    @property
    def in_scope(self) -> list[HitTestCase]:
        """The cases some entry should answer."""
        return [case for case in self.cases if case.in_scope]

    @property
    def top1_accuracy(self) -> float:
        """Share of in-scope questions whose best retrieved entry is right."""
        cases = self.in_scope
        return sum(case.retrieved_right for case in cases) / len(cases) if cases else 0.0

    @property
    def answer_accuracy(self) -> float:
        """Share of in-scope questions answered from the FAQ with a right entry."""
        cases = self.in_scope
        return sum(case.answered_right for case in cases) / len(cases) if cases else 0.0

    @property
    def failures(self) -> dict[str, list[HitTestCase]]:
        """Every question the bot did not get right, by how (FAILURE_KINDS, each listed)."""
        grouped: dict[str, list[HitTestCase]] = {kind: [] for kind in FAILURE_KINDS}
        for case in self.cases:
            if case.failure is not None:
                grouped[case.failure].append(case)
        return grouped

    @property
    def failure_count(self) -> int:
        return sum(len(cases) for cases in self.failures.values())

    @property
    def misses(self) -> list[HitTestCase]:
        """In-scope questions whose best entry is wrong, and out-of-scope ones answered anyway."""
        return [
            case
            for case in self.cases
            if (case.in_scope and not case.retrieved_right) or (not case.in_scope and case.answer.source == "faq")
        ]


@dataclass(frozen=True)
class HitShown:
    """A retrieved entry as an editor reads it: the phrasing that matched, the entry's question,
    category and the start of its answer, and the score against the thresholds in force."""

    entry_id: int
    question: str
    category: str
    answer_start: str
    phrasing: str
    score: float
    verdict: str  # the score against the answer and clarify thresholds
    # What ranked it when the entry classifier did (cosine + weight x log P(entry)): the hits are
    # then not in score order, and the editor sees why.
    ranking_score: float | None = None

    @property
    def matched_question(self) -> bool:
        """The phrasing that matched is the entry's question itself."""
        return self.phrasing == self.question


@dataclass(frozen=True)
class HitTestResult:
    """One question, what the bot would do, and its hits as shown."""

    question: str
    answer: Answer
    hits: list[HitShown]


def _verdict(score: float, answer: Answer) -> str:
    thresholds = answer.decision.thresholds
    if thresholds is None:
        return ""
    return score_verdict(score, answer=thresholds.answer, clarify=thresholds.clarify)


def hits_shown(answers: Iterable[Answer]) -> list[list[HitShown]]:
    """Each answer's hits as an editor reads them (two queries for all of them)."""
    answers = list(answers)
    variant_ids = {hit.matched_variant_id for answer in answers for hit in answer.hits}
    entry_ids = {hit.entry_id for answer in answers for hit in answer.hits}
    phrasings = dict(Variant.objects.filter(id__in=variant_ids).values_list("id", "text"))
    categories = dict(Entry.objects.filter(id__in=entry_ids).values_list("id", "category"))
    shown = []
    for answer in answers:
        rows = []
        for hit in answer.hits:
            start = hit.answer if len(hit.answer) <= ANSWER_START_CHARS else hit.answer[:ANSWER_START_CHARS] + "…"
            rows.append(
                HitShown(
                    entry_id=hit.entry_id,
                    question=hit.question,
                    category=categories.get(hit.entry_id, ""),
                    answer_start=start,
                    # A phrasing edited or deleted since the index was built: the index's own text.
                    phrasing=phrasings.get(hit.matched_variant_id, hit.question),
                    score=hit.score,
                    verdict=_verdict(hit.score, answer),
                    ranking_score=hit.fused_score if answer.decision.search_mode == "dense+classifier" else None,
                )
            )
        shown.append(rows)
    return shown


def hit_test(questions: list[str]) -> list[HitTestResult]:
    """Each non-empty question with the answer the bot would give and its hits as shown."""
    asked = [(question, answer_question(question)) for question in (q.strip() for q in questions) if question]
    shown = hits_shown(answer for _question, answer in asked)
    return [HitTestResult(question, answer, hits) for (question, answer), hits in zip(asked, shown, strict=True)]


FAILURE_COLUMNS = (
    "failure",
    "question",
    "expected",
    "decision",
    "reason",
    "answered_entry_id",
    "top_entry_id",
    "top_question",
    "top_score",
)


def failures_csv(report: HitTestReport) -> str:
    """Every failure of a batch report as CSV (formula-like cells quoted, as kb exports do)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(FAILURE_COLUMNS)
    for kind, cases in report.failures.items():
        for case in cases:
            top = case.answer.hits[0] if case.answer.hits else None
            row = [
                kind,
                case.question,
                case.expected,
                case.answer.kind.value,
                case.answer.decision.reason,
                case.answer.entry_id or "",
                top.entry_id if top else "",
                top.question if top else "",
                f"{top.score:.4f}" if top else "",
            ]
            writer.writerow([csv_cell_safe(cell) for cell in row])
    return buffer.getvalue()


def _expected_lookup() -> tuple[dict[str, frozenset[int]], dict[str, int], set[int]]:
    by_category: dict[str, set[int]] = {}
    by_question: dict[str, int] = {}
    ids = set()
    for entry_id, question, category in Entry.objects.values_list("id", "question", "category"):
        by_category.setdefault(category.casefold(), set()).add(entry_id)
        by_question[text_key(question)] = entry_id
        ids.add(entry_id)
    return {key: frozenset(value) for key, value in by_category.items()}, by_question, ids


def hit_test_rows(
    rows: list[dict], progress=None, llm_available: bool | None = None, features: bool = False
) -> HitTestReport:
    """Run labelled rows: a ``question`` (or ``text``) and the expected entry, given as
    ``expected`` (an entry id or the entry's question) or as ``category`` (any entry of it); the
    label ``oos`` (or ``out_of_scope``, ``none``) marks a question no entry should answer.
    ``features``: compute every question's retrieval features (to fit the answer confidence)."""
    by_category, by_question, ids = _expected_lookup()
    report = HitTestReport()
    for number, row in enumerate(rows, start=1):
        question = str(row.get("question") or row.get("text") or "").strip()
        if not question:
            report.errors.append(f"row {number}: no question")
            continue
        if is_out_of_scope(row):
            expected, expected_ids = "out of scope", frozenset()
        elif row.get("expected") not in (None, ""):
            expected = str(row["expected"]).strip()
            if expected.isdigit() and int(expected) in ids:
                expected_ids = frozenset({int(expected)})
            elif text_key(expected) in by_question:
                expected_ids = frozenset({by_question[text_key(expected)]})
            else:
                report.errors.append(f"row {number}: no entry with id or question {expected!r}")
                continue
        elif row.get("category") not in (None, ""):
            expected = str(row["category"]).strip()
            expected_ids = by_category.get(expected.casefold(), frozenset())
            if not expected_ids:
                report.errors.append(f"row {number}: no entry in category {expected!r}")
                continue
        else:
            report.errors.append(f"row {number}: no expected entry (column expected or category)")
            continue
        answer = answer_question(question, llm_available=llm_available, features=features or None)
        report.cases.append(HitTestCase(question, expected, expected_ids, answer))
        if progress is not None:
            progress(1)
    return report
