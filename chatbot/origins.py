"""Which pages may open the chat websocket: the app's own origin, and origins listed in
CHATBOT_ALLOWED_ORIGINS, each compared by scheme, host and port (Channels'
AllowedHostsOriginValidator compared the host only, so http://localhost:6666 and
https://127.0.0.1:1 were accepted)."""

from __future__ import annotations

from urllib.parse import urlparse

from channels.security.websocket import OriginValidator, WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

# The page's scheme for the socket's: a page served over https opens wss.
_PAGE_SCHEME = {"ws": "http", "wss": "https", "http": "http", "https": "https"}
# Channels' matcher (scheme, host, port, with default ports); it keeps no state of its own.
_MATCHER = OriginValidator(application=None, allowed_origins=[])


def _header(scope: dict, name: bytes) -> str | None:
    return next((value.decode("latin1") for key, value in scope.get("headers", []) if key == name), None)


def own_origin(scope: dict) -> str | None:
    """The origin of this app's own pages for this connection, or None when its Host is not one
    of ALLOWED_HOSTS."""
    host = _header(scope, b"host") or ""
    domain, port = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    scheme = _PAGE_SCHEME.get(scope.get("scheme", "ws"), "http")
    return f"{scheme}://{host}" if port else f"{scheme}://{domain}"


def origin_allowed(origin: str | None, scope: dict) -> bool:
    """Whether a page on ``origin`` may open the chat socket on a connection with ``scope``: it is
    the app's own origin or listed in CHATBOT_ALLOWED_ORIGINS (read per handshake, so a changed
    setting applies at once). A missing Origin never may."""
    if not origin:
        return False
    parsed = urlparse(origin)
    patterns = [own_origin(scope), *settings.CHATBOT_ALLOWED_ORIGINS]
    return any(_MATCHER.match_allowed_origin(parsed, pattern) for pattern in patterns if pattern and pattern != "*")


class ChatOriginValidator:
    """ASGI middleware: websocket handshakes from origins :func:`origin_allowed` refuses are denied."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if origin_allowed(_header(scope, b"origin"), scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
