"""ASGI entry point: HTTP through Django, websockets through Channels, in one application.

Production settings unless DJANGO_SETTINGS_MODULE says otherwise (as in cookiecutter-django); `make
run`, the tests and the benchmarks set it explicitly for the servers they start.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")
# Django must be set up before anything imports models (the consumers do).
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chatbot.routing import websocket_urlpatterns as chat_routes  # noqa: E402
from chatbot.runtime import web_process_start  # noqa: E402
from ops.routing import websocket_urlpatterns as agent_routes  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Each route checks its own handshake: customers' sockets against their site's allowed
        # origins, the agent console's against the app's own origin and the agent's session.
        "websocket": URLRouter([*chat_routes, *agent_routes]),
    }
)

# Loading the embedder and the index takes seconds: pay it once at start-up, never inside a
# customer's request; then the query batcher and the background index loader run beside the loop.
if os.environ.get("CHATBOT_WARM_UP", "1") == "1":
    web_process_start()
