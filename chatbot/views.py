"""HTTP views of the customer side: the demo page, liveness and readiness."""

import os

from django.http import JsonResponse
from django.shortcuts import render

from chatbot import protocol
from kb.models import IndexVersion
from kb.query_batching import query_batching_stats
from kb.selectors import current_index


def demo_page(request):
    """A demo shop page with a simple chat box on the websocket."""
    return render(request, "chatbot/demo.html")


def protocol_schema(request):
    """The chat protocol's JSON Schema (chatbot.protocol), for widget and client builders."""
    return JsonResponse(protocol.protocol_schema(), json_dumps_params={"ensure_ascii": False})


def healthz(request):
    """Liveness plus the published index version, for `make run` and load balancers."""
    latest = IndexVersion.objects.order_by("-id").values("id", "vector_count").first()
    return JsonResponse(
        {
            "status": "ok",
            "index_version": latest["id"] if latest else None,
            "vectors": latest["vector_count"] if latest else 0,
        }
    )


def readyz(request):
    """Readiness of this web process: 200 once it has an index loaded and can answer, else 503
    (a load balancer sends customers elsewhere meanwhile). Reads only process memory."""
    loaded = current_index.get() if current_index.background else None
    ready = loaded is not None
    body = {
        "ready": ready,
        "pid": os.getpid(),
        "index_version": loaded.version if loaded else None,
        "vectors": loaded.index.ntotal if loaded else 0,
        "query_batching": query_batching_stats(),
    }
    if not ready:
        body["reason"] = (
            "this process has not loaded an index yet"
            if current_index.background
            else "this process does not serve chat (no background index loader was started)"
        )
    return JsonResponse(body, status=200 if ready else 503)
