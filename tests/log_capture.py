"""Log lines as deployments see them: rendered by the root handler's formatter from settings.LOGGING."""

import io
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import structlog


@contextmanager
def log_lines_captured() -> Iterator[Callable[[], list[dict]]]:
    """Within the block, every log line also goes to a buffer; the yielded function parses them."""
    configured = next(
        h for h in logging.getLogger().handlers if isinstance(h.formatter, structlog.stdlib.ProcessorFormatter)
    )
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(configured.formatter)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)
