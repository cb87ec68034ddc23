"""The HTTP API fuzzed from the OpenAPI schema it serves (schemathesis, issue 10): whatever a KB
editor's client sends, valid or not (control characters, lone surrogates, huge numbers, wrong
types, missing fields), the answer is never a 5xx, and what comes back matches the schema.

Every operation runs in-process against Django's WSGI app, on the test database (PostgreSQL in
CI, which refuses NUL in text), with a fixed seed and a bounded number of examples, so a run
takes well under a minute and finds the same thing every time."""

from __future__ import annotations

import pytest
import schemathesis
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)

from kb.models import EDITORS_GROUP, Variant
from tests.factories import entries_create

SCHEMA_URL = "/api/schema/?format=json"
# No 5xx, and bodies, content types and headers as the schema says. Not checked: that every
# status code is documented (drf-spectacular leaves out 401/403/404) and schemathesis' opinions
# on which inputs must be accepted (kb.services refuses some that the schema allows, e.g. a
# blank question, with a documented 400).
CHECKS = [not_a_server_error, content_type_conformance, response_headers_conformance, response_schema_conformance]
MAX_EXAMPLES = 25

schema = schemathesis.openapi.from_wsgi(
    SCHEMA_URL,
    get_wsgi_application(),
    config=schemathesis.Config.from_dict(
        {
            "headers": {"Host": "localhost"},
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,  # Hypothesis' derandomize: the same examples on every run
                "database": "none",  # no example database: nothing carried over from a local run
                # The editor's token is sent by the test; generated Authorization headers would only get 401s.
                "with-security-parameters": False,
            },
        }
    ),
)


@pytest.fixture
def fuzz_kb(db):
    """A KB editor's token (the group's permissions, not a superuser) and the shop entries for
    the generated ids to point at."""
    editor = get_user_model().objects.create_user("fuzz-editor", "fuzz@example.com", "pw-fuzz-123")
    editor.groups.add(Group.objects.get(name=EDITORS_GROUP))
    token = Token.objects.create(user=editor)
    entry_ids = [entry.id for entry in entries_create()]
    # As Django's test client does: the WSGI handler would otherwise close the database connection
    # after each request, and with it the test's transaction.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield {"token": token.key, "entry_ids": entry_ids}
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def existing_id(value, ids: list[int]):
    """A generated id that fits a 32-bit column turned into one of ``ids``, so that reads, updates
    and deletes reach real rows; any other value (negative, past what a database column holds, not
    an integer) stays as generated. The coverage phase sends path ids as digits ("0")."""
    digits = isinstance(value, str) and value.isascii() and value.isdigit()
    number = int(value) if digits else value
    if isinstance(number, int) and not isinstance(number, bool) and 0 <= number < 2**31:
        chosen = ids[number % len(ids)]
        return str(chosen) if digits else chosen
    return value


def fuzz_ids(case, entry_ids: list[int]) -> list[int]:
    """The ids the operation's path points at: entries, or their phrasings (alternate ones first:
    primary phrasings refuse every edit, so most examples should reach the others)."""
    if not case.operation.path.startswith("/api/kb/variants/"):
        return entry_ids
    phrasings = Variant.objects.filter(entry_id__in=entry_ids).order_by("is_primary", "id")
    return list(phrasings.values_list("id", flat=True)) or entry_ids


@schema.parametrize()
# The fixture's rows are shared by one operation's examples on purpose: they are what ids point at.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_api_never_answers_with_a_server_error(case, fuzz_kb):
    entry_ids = fuzz_kb["entry_ids"]
    if case.path_parameters and "id" in case.path_parameters:
        case.path_parameters["id"] = existing_id(case.path_parameters["id"], fuzz_ids(case, entry_ids))
    if isinstance(case.body, dict) and "entry" in case.body:
        case.body["entry"] = existing_id(case.body["entry"], entry_ids)
    if case.query and "entry" in case.query:
        case.query["entry"] = existing_id(case.query["entry"], entry_ids)
    response = case.call(headers={"Authorization": f"Token {fuzz_kb['token']}"})
    # A path that names no route (a job id that is not a UUID) gets Django's own 404 page before
    # any API view runs: the schema cannot describe it, but it still must not be a 5xx.
    unrouted = response.status_code == 404 and response.headers.get("content-type", [""])[0].startswith("text/html")
    case.validate_response(response, checks=[not_a_server_error] if unrouted else CHECKS)
