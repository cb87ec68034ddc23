"""The JSON websocket consumer both of the app's sockets (the customer's chat, the agent console)
are built on."""

from __future__ import annotations

import logging

from channels.generic.websocket import AsyncJsonWebsocketConsumer

logger = logging.getLogger(__name__)


class JsonSocketConsumer(AsyncJsonWebsocketConsumer):
    """A JSON websocket consumer whose sends to a client that has just gone are dropped.

    uvicorn raises ClientDisconnected (an OSError) on a send after the client closed, and then never
    delivers the disconnect: a consumer ended by that raise skips its clean-up (a customer socket
    kept its place under the per-address connection cap; an agent's presence was renewed for ever).
    Dropped instead, the disconnect follows and the clean-up runs."""

    async def send_json(self, content, close=False):
        try:
            await super().send_json(content, close=close)
        except OSError as error:
            logger.info("client gone before a frame could be sent: %s", type(error).__name__)
