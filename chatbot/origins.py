"""Which pages may open the chat websocket: the app's own origin, and the allowed origins of the
connection's site (chatbot.sites; the default site's include CHATBOT_ALLOWED_ORIGINS), each compared
by scheme, host and port (Channels' AllowedHostsOriginValidator compared the host only, so
http://localhost:6666 and https://127.0.0.1:1 were accepted). Pure functions: the handshake
middleware that applies them is chatbot.handshake.ChatOriginValidator."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlparse

from channels.security.websocket import OriginValidator
from django.conf import settings
from django.core.exceptions import ValidationError
from django.http.request import split_domain_port, validate_host

# The page's scheme for the socket's: a page served over https opens wss.
_PAGE_SCHEME = {"ws": "http", "wss": "https", "http": "http", "https": "https"}
# Channels' matcher (scheme, host, port, with default ports); it keeps no state of its own.
_MATCHER = OriginValidator(application=None, allowed_origins=[])
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _header(scope: dict, name: bytes) -> str | None:
    return next((value.decode("latin1") for key, value in scope.get("headers", []) if key == name), None)


def scope_origin(scope: dict) -> str | None:
    """The ``Origin`` header of a websocket handshake, or None when the client sent none."""
    return _header(scope, b"origin")


def origin_normalise(value: str) -> str:
    """``value`` as the ``scheme://host[:port]`` a browser sends as ``Origin``: lower case, without
    a default port, path or trailing slash. Raises ValueError for anything that is not an http(s)
    origin (a path, a query, credentials, a wildcard), so a typo cannot widen the list."""
    text = (value or "").strip()
    try:
        parsed = urlparse(text)
        port = parsed.port  # raises ValueError for a port that is not a number in range
    except ValueError as error:
        raise ValueError(f"{text!r} is not an origin: {error}") from None
    scheme, host = parsed.scheme.lower(), (parsed.hostname or "")
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{text!r} is not an origin: it must start with http:// or https://")
    if not host or "*" in host or parsed.username is not None or parsed.password is not None:
        raise ValueError(f"{text!r} is not an origin: it needs a host name and nothing else before it")
    if parsed.path not in ("", "/") or parsed.params or parsed.query or parsed.fragment:
        raise ValueError(f"{text!r} is not an origin: no path, query or fragment (scheme://host[:port])")
    try:
        host = host.encode("idna").decode("ascii")  # browsers send an international name in punycode
    except UnicodeError:
        raise ValueError(f"{text!r} is not an origin: {host!r} is not a valid host name") from None
    if ":" in host:  # an IPv6 address keeps its brackets
        host = f"[{host}]"
    return f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS[scheme]) else f"{scheme}://{host}:{port}"


def origins_normalise(values: Iterable[str]) -> list[str]:
    """Every origin of ``values`` normalised (:func:`origin_normalise`), blanks and repeats dropped,
    in their order. Raises django's ValidationError naming every bad one, for a form or model."""
    normalised, errors = [], []
    for value in values:
        if not isinstance(value, str):
            errors.append(f"{value!r} is not an origin: not a string")
            continue
        if not value.strip():
            continue
        try:
            origin = origin_normalise(value)
        except ValueError as error:
            errors.append(str(error))
            continue
        if origin not in normalised:
            normalised.append(origin)
    if errors:
        raise ValidationError(errors)
    return normalised


def own_origin(scope: dict) -> str | None:
    """The origin of this app's own pages for this connection, or None when its Host is not one
    of ALLOWED_HOSTS."""
    host = _header(scope, b"host") or ""
    domain, port = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    scheme = _PAGE_SCHEME.get(scope.get("scheme", "ws"), "http")
    return f"{scheme}://{host}" if port else f"{scheme}://{domain}"


def origin_allowed(origin: str | None, scope: dict, allowed_origins: Iterable[str] | None = None) -> bool:
    """Whether a page on ``origin`` may open the chat socket on a connection with ``scope``: it is
    the app's own origin or one of ``allowed_origins`` (by default CHATBOT_ALLOWED_ORIGINS, read per
    handshake, so a changed setting applies at once). A missing Origin never may."""
    listed = settings.CHATBOT_ALLOWED_ORIGINS if allowed_origins is None else allowed_origins
    return origin_listed(origin, [own_origin(scope), *listed])


def origin_listed(origin: str | None, allowed_origins: Iterable[str]) -> bool:
    """Whether ``origin`` is one of ``allowed_origins`` (by scheme, host and port); for HTTP
    responses to other sites' pages (CORS), where the app's own origin needs no header."""
    if not origin:
        return False
    parsed = urlparse(origin)
    patterns = [pattern for pattern in allowed_origins if pattern and pattern != "*"]
    return any(_MATCHER.match_allowed_origin(parsed, pattern) for pattern in patterns)
