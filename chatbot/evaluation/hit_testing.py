"""Hit testing: what the bot would answer, through the very pipeline live chat uses."""

from __future__ import annotations

from dataclasses import dataclass, field

from chatbot.evaluation.calibration import ScoredQuestion
from chatbot.evaluation.labelled import is_out_of_scope
from chatbot.pipeline import Answer, answer_question
from kb.models import Entry
from kb.text import text_key


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
    def misses(self) -> list[HitTestCase]:
        """In-scope questions whose best entry is wrong, and out-of-scope ones answered anyway."""
        return [
            case
            for case in self.cases
            if (case.in_scope and not case.retrieved_right) or (not case.in_scope and case.answer.source == "faq")
        ]


def hit_test(questions: list[str]) -> list[tuple[str, Answer]]:
    """Each non-empty question with the answer the bot would give."""
    return [(question, answer_question(question)) for question in (q.strip() for q in questions) if question]


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
