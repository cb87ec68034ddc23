"""Websocket routes of the customer chat: the handshake checks the site and the page's origin."""

from channels.auth import AuthMiddlewareStack
from django.urls import path

from chatbot.consumers import ChatConsumer
from chatbot.handshake import ChatOriginValidator

websocket_urlpatterns = [
    path("ws/chat/", ChatOriginValidator(AuthMiddlewareStack(ChatConsumer.as_asgi()))),
]
