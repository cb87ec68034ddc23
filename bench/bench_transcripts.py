"""The ops console on a big transcript store (issue 15): 100,000 conversations and 1,000,000
messages in PostgreSQL (written with COPY), then the console's queries timed as ops use them: the
transcripts list (page 1 and a deep page) unfiltered and under each filter, a conversation with its
traces, the CSV export's rate, and the metrics dashboard over 30 days. Each figure is the median of
five runs after one warm-up; the plan of the slowest list query is printed.

Run: .venv/bin/python bench/bench_transcripts.py [--conversations 100000]   (PostgreSQL at 127.0.0.1)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import Timer, isolated_environment, reachable, save, table  # noqa: E402

MESSAGES_PER_CONVERSATION = 10
DAYS = 90
WORDS = "order parcel refund card payment delivery account password return invoice garden bitcoin".split()
REPEATS = 5


def setup() -> None:
    if not reachable("127.0.0.1", 5432):
        raise SystemExit("PostgreSQL is not running at 127.0.0.1:5432: this benchmark measures it.")
    workdir = Path(tempfile.mkdtemp(prefix="bench-transcripts-"))
    os.environ.update(isolated_environment("transcripts", workdir))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _copy(cursor, table_name: str, columns: list[str], rows) -> None:
    with cursor.copy(f"COPY {table_name} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _columns(model) -> list[str]:
    return [field.column for field in model._meta.concrete_fields]


def generate(conversations: int, seed: int = 15) -> dict:
    """Write the conversations, their messages and some feedback with COPY; returns what was made."""
    from django.db import connection

    from chatbot.models import Conversation, Feedback, Message, Outcome, Site

    # As chatbot.services.reply_outcome keeps it for live conversations.
    OUTCOME_OF_REPLY = {
        ("faq", None): Outcome.FAQ,
        ("llm", None): Outcome.LLM,
        ("handoff", "offered"): Outcome.UNANSWERED,
        ("handoff", "requested"): Outcome.HANDED_OFF,
    }

    rng = random.Random(seed)
    site_id = Site.objects.get(key="default").pk
    now = datetime.now(UTC)
    conversation_rows, message_rows, feedback_rows = [], [], []
    message_id = 0
    for _ in range(conversations):
        conversation_id = uuid.uuid4()
        started = now - timedelta(seconds=rng.uniform(0, DAYS * 86400))
        rating = rng.randint(1, 5) if rng.random() < 0.1 else None
        language = "zh" if rng.random() < 0.3 else "en"
        requested = rng.random() < 0.03
        state = "waiting" if requested else "bot"
        at = started
        outcome, requested_at = Outcome.NONE, None
        for turn in range(MESSAGES_PER_CONVERSATION // 2):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
            message_id += 1
            asked = message_id
            message_rows.append(
                (
                    asked,
                    conversation_id,
                    "customer",
                    f"question about {words}",
                    f"c{turn}",
                    None,
                    "",
                    None,
                    None,
                    "[]",
                    "{}",
                    "[]",
                    "{}",
                    None,
                    at,
                )
            )
            roll = rng.random()
            if requested and turn == MESSAGES_PER_CONVERSATION // 2 - 1:
                source, decision = (
                    "handoff",
                    {"kind": "handoff", "reason": "asked", "language": language, "handoff": "requested"},
                )
            elif roll < 0.70:
                source, decision = (
                    "faq",
                    {"kind": "faq", "reason": "best score reaches the answer threshold", "language": language},
                )
            elif roll < 0.80:
                source, decision = (
                    "llm",
                    {
                        "kind": "llm",
                        "reason": "below",
                        "language": language,
                        "llm": {"status": "answered", "model": "gemma", "attempts": 1},
                    },
                )
            elif roll < 0.90:
                source, decision = (
                    "handoff",
                    {"kind": "handoff", "reason": "below", "language": language, "handoff": "offered"},
                )
            else:
                source, decision = "clarify", {"kind": "clarify", "reason": "close", "language": language}
            retrieval = [{"entry_id": None, "score": round(rng.uniform(0.2, 0.9), 4), "variant_id": None}]
            timings = {"embed": round(rng.uniform(3, 9), 2), "total": round(rng.uniform(6, 40), 2)}
            message_id += 1
            message_rows.append(
                (
                    message_id,
                    conversation_id,
                    "bot",
                    f"answer about {words}",
                    None,
                    asked,
                    source,
                    None,
                    round(rng.uniform(0.2, 0.9), 4),
                    json.dumps(retrieval),
                    json.dumps(decision),
                    "[]",
                    json.dumps(timings),
                    None,
                    at,
                )
            )
            outcome = max(outcome, OUTCOME_OF_REPLY.get((source, decision.get("handoff")), Outcome.NONE))
            if decision.get("handoff") == "requested":
                requested_at = at
            if rng.random() < 0.05:
                value = "down" if rng.random() < 0.4 else "up"
                feedback_rows.append((message_id, value, "", at, at))
            at += timedelta(seconds=rng.uniform(5, 120))
        conversation_rows.append(
            (conversation_id, site_id, state, started, at, "", "", rating, "", None, requested_at, None, None, outcome)
        )
    with connection.cursor() as cursor:
        raw = cursor.cursor
        # Rows are built in the models' field order: every column, primary keys included.
        _copy(raw, Conversation._meta.db_table, _columns(Conversation), conversation_rows)
        _copy(raw, Message._meta.db_table, _columns(Message), message_rows)
        _copy(raw, Feedback._meta.db_table, _columns(Feedback)[1:], feedback_rows)  # its id is generated
        cursor.execute(f"SELECT setval(pg_get_serial_sequence('{Message._meta.db_table}', 'id'), %s)", [message_id])
        cursor.execute("ANALYZE")
    return {"conversations": conversations, "messages": len(message_rows), "feedback": len(feedback_rows)}


def timed(function) -> float:
    """Median milliseconds of REPEATS calls after a warm-up."""
    function()
    samples = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(samples), 1)


def measure() -> list[tuple[str, float, str]]:
    from django.utils import timezone

    from chatbot.models import Conversation
    from ops.exports import conversations_csv
    from ops.metrics import dashboard
    from ops.selectors import TranscriptFilter, conversation_messages, transcripts_page
    from ops.trace import traces_of
    from ops.views import PAGE_SIZE

    today = timezone.localdate()

    def page(spec: TranscriptFilter, number: int = 1):
        def run():
            shown, rows = transcripts_page(spec, number, PAGE_SIZE)  # as the list view does
            return shown.paginator.count, rows

        return run

    cases = [
        ("list, page 1", TranscriptFilter(), 1),
        ("list, page 200", TranscriptFilter(), 200),
        ("outcome = unanswered", TranscriptFilter(outcome="unanswered"), 1),
        ("outcome = FAQ", TranscriptFilter(outcome="faq"), 1),
        ("outcome = handed off", TranscriptFilter(outcome="handed_off"), 1),
        ("thumbs down", TranscriptFilter(thumbs="down"), 1),
        ("language = zh", TranscriptFilter(language="zh"), 1),
        ("rating = 1", TranscriptFilter(rating=1), 1),
        ("last 7 days", TranscriptFilter(since=today - timedelta(days=6)), 1),
        ("text 'bitcoin refund'", TranscriptFilter(text="bitcoin refund"), 1),
    ]
    rows = []
    for label, spec, number in cases:
        count, listed = page(spec, number)()
        rows.append((label, timed(page(spec, number)), f"{count:,} match, {len(listed)} listed"))

    one = Conversation.objects.order_by("-created_at").first()
    rows.append(
        (
            "a conversation with its traces",
            timed(lambda: traces_of(list(conversation_messages(one)), with_prompt=True)),
            "10 messages",
        )
    )
    spec = TranscriptFilter(since=today - timedelta(days=6))
    with Timer() as export:
        lines = sum(1 for _ in conversations_csv(spec))
    rows.append(
        (
            "CSV export, last 7 days",
            round(export.seconds * 1000, 1),
            f"{lines - 1:,} rows, {(lines - 1) / export.seconds:,.0f} rows/s",
        )
    )
    with Timer() as board:
        figures = dashboard(today - timedelta(days=29), today)
    rows.append(
        ("metrics dashboard, 30 days", round(board.seconds * 1000, 1), f"{figures.conversations:,} conversations")
    )
    return rows


def explain_unanswered() -> str:
    """PostgreSQL's plan (with timings) of picking page 1's ids under the outcome filter."""
    from ops.selectors import TranscriptFilter, conversations_matching

    matching = conversations_matching(TranscriptFilter(outcome="unanswered")).order_by("-created_at")
    return matching.values("pk")[:50].explain(analyze=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=100_000)
    args = parser.parse_args()
    setup()
    with Timer() as writing:
        made = generate(args.conversations)
    print(
        f"wrote {made['conversations']:,} conversations, {made['messages']:,} messages, "
        f"{made['feedback']:,} feedback in {writing.seconds:.0f} s"
    )
    rows = measure()
    print(table(rows, ("query", "ms (median of 5)", "result")))
    plan = explain_unanswered()
    print("\nplan of 'outcome = unanswered', page 1:\n" + plan)
    path = save(
        "transcripts",
        {
            "data": made,
            "results": [{"query": label, "ms": ms, "result": result} for label, ms, result in rows],
            "plan_unanswered": plan,
        },
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
