"""Fields that every log line of a context carries: the conversation id of a chat socket.

Bound with structlog's contextvars: the consumer binds the id once per socket and every line logged
afterwards in that socket's task (and in the answer pool's threads working for it, see
chatbot.runtime) carries ``conversation_id``, whether logged through structlog or stdlib logging.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

import structlog


def conversation_bind(conversation_id: UUID | str) -> None:
    """Put ``conversation_id`` on every log line of the current context from now on (call it in the
    socket's task when its conversation is known, and again if it changes)."""
    structlog.contextvars.bind_contextvars(conversation_id=str(conversation_id))


def conversation_unbind() -> None:
    """Stop putting a conversation id on the current context's log lines."""
    structlog.contextvars.unbind_contextvars("conversation_id")


def log_context() -> dict:
    """The fields bound in the current context, to carry into another thread."""
    return structlog.contextvars.get_contextvars()


@contextmanager
def log_context_bound(fields: dict) -> Iterator[None]:
    """Bind ``fields`` (from :func:`log_context`) for the duration of the block, then restore."""
    if not fields:
        yield
        return
    with structlog.contextvars.bound_contextvars(**fields):
        yield
