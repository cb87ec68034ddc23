"""Structured logs: every line, ours (structlog) and the libraries' (stdlib logging: Django, uvicorn,
Celery), goes through one structlog ProcessorFormatter and comes out as one JSON object per line
(``LOG_FORMAT=json``, the default) or a readable console line (``LOG_FORMAT=console``, local).

Django calls :func:`logging_configure` with ``settings.LOGGING`` (``LOGGING_CONFIG`` names it); Celery
processes call it too (config/celery.py), so workers and beat log the same way.

What never reaches a log line: SQL parameters (``django.db.backends`` stays above DEBUG, since a
stored message's text is a parameter), local variables of a traceback (plain tracebacks only: rich's
show the customer's text held in a frame), and secrets written the usual ways (URL passwords,
``token=``/``password=``/``resume=`` parameters, bearer tokens) in any string of a line (:func:`secrets_scrub`).
Customer text is simply never logged; code that must show some runs it through chatbot.pii first.
"""

from __future__ import annotations

import logging.config
import os
import re
import sys
from typing import Any

import structlog

LOG_FORMATS = ("json", "console")

_SECRET_PATTERNS = (
    # scheme://user:password@host
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@"), r"\1***@"),
    # password=..., token=..., api_key=..., resume=... (the chat's resume token, in the socket URL
    # that uvicorn logs) in query strings and key=value text
    (
        re.compile(r"(?i)\b(resume(?:[_-]?token)?|token|password|passwd|secret|api[_-]?key)=[^&\s'\"]+"),
        r"\1=***",
    ),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1***"),
)


def secret_scrub(text: str) -> str:
    """``text`` with passwords in URLs, secret-looking ``key=value`` parameters and bearer tokens
    replaced by ``***``."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def secrets_scrub(logger: Any, method_name: str, event_dict: dict) -> dict:
    """structlog processor: :func:`secret_scrub` over every string value of the line (the message,
    a traceback, uvicorn's request line with its query string)."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = secret_scrub(value)
    return event_dict


def _add_pid(logger: Any, method_name: str, event_dict: dict) -> dict:
    # Several web processes share one port and one log stream: the pid tells them apart.
    event_dict.setdefault("pid", os.getpid())
    return event_dict


# Applied to every line: structlog's own (before the stdlib hand-over) and the libraries' (in the formatter).
_SHARED_PROCESSORS = (
    # A value bound with chatbot.logging_context (the conversation id) lands on every line of its context.
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    _add_pid,
)


def logging_config(*, log_format: str, level: str) -> dict:
    """The ``LOGGING`` dict for ``log_format`` ("json" or "console") at ``level``."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    if log_format == "json":
        render = [structlog.processors.format_exc_info, secrets_scrub, structlog.processors.JSONRenderer()]
    else:
        console = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        render = [secrets_scrub, console]
    # Library loggers that bring handlers of their own (uvicorn's, Django's defaults) hand their
    # lines to the root handler instead, so that every line has one format.
    to_root = {"handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structured": {
                "()": structlog.stdlib.ProcessorFormatter,
                "foreign_pre_chain": list(_SHARED_PROCESSORS),
                "processors": [structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
            }
        },
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django": {**to_root, "level": "INFO"},
            "django.server": to_root,
            # DEBUG here logs every SQL statement with its parameters: customer messages included.
            "django.db.backends": {"level": "INFO"},
            "uvicorn": to_root,
            "uvicorn.error": to_root,
            "uvicorn.access": to_root,
            "faiss.loader": {"level": "WARNING"},
            # One INFO line per LLM request is noise; errors still show.
            "httpx2": {"level": "WARNING"},
            "httpx": {"level": "WARNING"},
        },
    }


def structlog_configure() -> None:
    """Make structlog loggers hand their lines to stdlib logging, whose handler renders them."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED_PROCESSORS,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def logging_configure(config: dict) -> None:
    """Django's ``LOGGING_CONFIG`` callable: structlog first, then the stdlib ``config``."""
    structlog_configure()
    logging.config.dictConfig(config)
