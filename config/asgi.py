"""ASGI entry point: HTTP through Django, websockets through Channels, in one application.

Production settings unless DJANGO_SETTINGS_MODULE says otherwise (as in cookiecutter-django); `make
run`, the tests and the benchmarks set it explicitly for the servers they start.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")
# Django must be set up before anything imports models (the consumers do).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chatbot.handshake import ChatOriginValidator  # noqa: E402
from chatbot.routing import websocket_urlpatterns  # noqa: E402
from chatbot.runtime import web_process_start  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": ChatOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

# Loading the embedder and the index takes seconds: pay it once at start-up, never inside a
# customer's request; then the query batcher and the background index loader run beside the loop.
if os.environ.get("CHATBOT_WARM_UP", "1") == "1":
    web_process_start()
