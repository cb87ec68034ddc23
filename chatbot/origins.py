"""Which pages may open the chat websocket: the app's own origin, and origins listed in
CHATBOT_ALLOWED_ORIGINS, each compared by scheme, host and port (Channels'
AllowedHostsOriginValidator compared the host only, so http://localhost:6666 and
https://127.0.0.1:1 were accepted)."""

from __future__ import annotations

from urllib.parse import urlparse

from channels.security.websocket import OriginValidator
from django.conf import settings
from django.http.request import split_domain_port, validate_host

# The page's scheme for the socket's: a page served over https opens wss.
_PAGE_SCHEME = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


class ChatOriginValidator(OriginValidator):
    """Accepts a handshake whose Origin is the origin the app itself is served from (the Host
    header, when it is one of ALLOWED_HOSTS, with the connection's scheme) or is listed in
    CHATBOT_ALLOWED_ORIGINS; refuses the rest, and a missing Origin."""

    def __init__(self, application):
        super().__init__(application, allowed_origins=[])

    async def __call__(self, scope, receive, send):
        self._own_origin = self.own_origin(scope)
        return await super().__call__(scope, receive, send)

    def validate_origin(self, parsed_origin) -> bool:
        # Read per handshake, not at start-up: the list is a setting tests and deployments change.
        patterns = [self._own_origin] if self._own_origin else []
        patterns += settings.CHATBOT_ALLOWED_ORIGINS
        return any(self.match_allowed_origin(parsed_origin, pattern) for pattern in patterns if pattern != "*")

    @staticmethod
    def own_origin(scope) -> str | None:
        """The origin of this app's own pages for this connection, or None when its Host is not
        one of ALLOWED_HOSTS."""
        host = next((value.decode("latin1") for name, value in scope.get("headers", []) if name == b"host"), "")
        domain, port = split_domain_port(host)
        if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
            return None
        scheme = _PAGE_SCHEME.get(scope.get("scheme", "ws"), "http")
        return f"{scheme}://{host}" if port else f"{scheme}://{domain}"


def origin_allowed(origin: str, scope: dict) -> bool:
    """Whether ``origin`` may open the chat socket on a connection with ``scope`` (for tests and
    diagnostics; the validator applies the same rule)."""
    validator = ChatOriginValidator(application=None)
    validator._own_origin = validator.own_origin(scope)
    return validator.valid_origin(urlparse(origin))
