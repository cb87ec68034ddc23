"""Request body parsers of the REST API (REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"])."""

from __future__ import annotations

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, with nesting deeper than Python's decoder can follow (``"[" * 100000``)
    refused as a parse error (400): DRF only catches ValueError, so the RecursionError was a 500."""

    def parse(self, stream, media_type=None, parser_context=None):
        """The decoded body; ParseError for anything that is not JSON the API can read."""
        try:
            return super().parse(stream, media_type=media_type, parser_context=parser_context)
        except RecursionError as exc:
            raise ParseError("JSON parse error - the body is nested too deeply.") from exc
