"""Fixtures of the chat tests: the shop knowledge base, embedded and published."""

import pytest

from tests.factories import entries_create, kb_embed_and_publish

ORIGIN = [(b"origin", b"http://localhost"), (b"host", b"localhost")]


@pytest.fixture
def shop(transactional_db):
    """The four shop entries (tests/factories.py), by question, searchable."""
    entries = {entry.question: entry for entry in entries_create()}
    kb_embed_and_publish()
    return entries
