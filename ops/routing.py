"""The ops console's websocket route: the agent inbox, signed in with the admin's session (the
consumer checks the page's origin and the agent's permission)."""

from channels.auth import AuthMiddlewareStack
from django.urls import path

from ops.agent_consumer import AgentConsumer

websocket_urlpatterns = [
    path("ws/agent/", AuthMiddlewareStack(AgentConsumer.as_asgi())),
]
