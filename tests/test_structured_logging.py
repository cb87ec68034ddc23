"""Structured logs (config/structured_logging.py): one JSON object per line with the bound
conversation id, the same for stdlib and structlog loggers, and no secrets, SQL parameters or
traceback locals."""

import json
import logging

import pytest
import structlog
from django.db import connection

from chatbot.logging_context import conversation_bind, conversation_unbind
from config.structured_logging import secret_scrub
from tests.log_capture import log_lines_captured
from tests.test_setup import run_python


@pytest.fixture
def log_lines():
    """Lines rendered by the root handler's own formatter (as configured from settings.LOGGING)."""
    with log_lines_captured() as lines:
        yield lines
    conversation_unbind()


def test_stdlib_and_structlog_lines_are_json_with_the_bound_conversation_id(log_lines):
    conversation_bind("0b7e2f4c-0000-4000-8000-000000000001")
    logging.getLogger("chatbot.somewhere").warning("index v%s is late", 7)
    structlog.stdlib.get_logger("chatbot.elsewhere").info("message answered", source="faq", ms=12.5)
    conversation_unbind()
    logging.getLogger("chatbot.somewhere").warning("after the socket closed")
    first, second, third = log_lines()
    assert (
        first["event"] == "index v7 is late" and first["level"] == "warning" and first["logger"] == "chatbot.somewhere"
    )
    assert first["conversation_id"] == "0b7e2f4c-0000-4000-8000-000000000001"
    assert second["event"] == "message answered" and (second["source"], second["ms"]) == ("faq", 12.5)
    assert second["conversation_id"] == first["conversation_id"]
    assert {"timestamp", "pid"} <= second.keys()
    assert "conversation_id" not in third


def test_secrets_are_scrubbed_and_tracebacks_show_no_locals(log_lines):
    # uvicorn logs a socket's URL with its query string, the resume token included.
    logging.getLogger("uvicorn.error").info(
        '%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", "/ws/chat/?conversation=abc&resume=SeCrEt-ToKeN"
    )

    def answer(text):
        raise ValueError("the database at postgres://chatbot:hunter2@db:5432/chatbot refused")

    card = "4111 " * 3 + "1111"  # built here, so that no source line shown in a traceback holds it
    try:
        answer(f"my card is {card}")
    except ValueError:
        logging.getLogger("chatbot.consumers").exception("answering message c-1 failed")
    request_line, failure = log_lines()
    assert "SeCrEt-ToKeN" not in json.dumps(request_line) and "resume=***" in request_line["event"]
    assert "hunter2" not in json.dumps(failure) and "postgres://chatbot:***@db" in failure["exception"]
    # The traceback names the frames, never their local variables (the customer's text).
    assert "in answer" in failure["exception"] and card not in json.dumps(failure)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("GET /x?token=abc&page=2", "GET /x?token=***&page=2"),
        ("redis://:pw@redis:6379/0", "redis://:***@redis:6379/0"),
        ("Authorization: Bearer abc.def", "Authorization: Bearer ***"),
        ("password=hunter2 user=bob", "password=*** user=bob"),
        ("/ws/chat/?conversation=1&resume_token=t", "/ws/chat/?conversation=1&resume_token=***"),
        ("index v3 loaded in 12 ms", "index v3 loaded in 12 ms"),
    ],
)
def test_secret_scrub(text, expected):
    assert secret_scrub(text) == expected


@pytest.mark.django_db
def test_sql_parameters_are_never_logged(log_lines, caplog):
    caplog.set_level(logging.DEBUG)
    connection.force_debug_cursor = True  # what DEBUG=True does: every query goes to django.db.backends
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT %s", ["where is my parcel, jane@example.com"])
    finally:
        connection.force_debug_cursor = False
    assert "jane@example.com" not in caplog.text and "jane@example.com" not in json.dumps(log_lines())


def test_production_logs_json_by_default_and_local_logs_for_the_console(tmp_path):
    code = "import django, logging; django.setup(); logging.getLogger('probe').warning('hello %s', 'there')"
    production = run_python(
        code,
        DJANGO_SETTINGS_MODULE="config.settings.production",
        DJANGO_SECRET_KEY="x" * 50,
        DJANGO_ALLOWED_HOSTS="shop.example",
        VAR_DIR=str(tmp_path),
    )
    assert production.returncode == 0, production.stderr
    line = json.loads(production.stderr.strip().splitlines()[-1])
    assert (line["event"], line["level"], line["logger"]) == ("hello there", "warning", "probe")
    local = run_python(code, DJANGO_SETTINGS_MODULE="config.settings.local", VAR_DIR=str(tmp_path))
    assert "hello there" in local.stderr and not local.stderr.strip().startswith("{")
    chosen = run_python(code, DJANGO_SETTINGS_MODULE="config.settings.local", VAR_DIR=str(tmp_path), LOG_FORMAT="json")
    assert json.loads(chosen.stderr.strip().splitlines()[-1])["event"] == "hello there"
