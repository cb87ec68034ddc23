"""The chat websocket's handshake check: the connection's site (``?site=KEY``, the default site when
absent) must be known and active, and the page's origin allowed for it (chatbot.sites), or the
handshake is refused. The site goes on to the consumer as ``scope["chat_site"]``."""

from __future__ import annotations

from channels.security.websocket import WebsocketDenier

from chatbot import protocol
from chatbot.origins import scope_origin
from chatbot.sites import site_lookup, site_origin_allowed


class ChatOriginValidator:
    """ASGI middleware: websocket handshakes for an unknown or inactive site, or from an origin
    that site does not allow, are denied (Channels' 403 before accept)."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        origin = scope_origin(scope)
        if origin:  # a missing Origin never may: no look-up for it
            key = protocol.connect_query_parse(scope.get("query_string", b"")).site
            site = await site_lookup(key)
            if site is not None and site_origin_allowed(site=site, origin=origin, scope=scope):
                return await self.application({**scope, "chat_site": site}, receive, send)
        return await WebsocketDenier()(scope, receive, send)
