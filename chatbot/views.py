"""HTTP views of the customer side: the demo page and a health check."""

from django.http import JsonResponse
from django.shortcuts import render

from kb.models import IndexVersion


def demo_page(request):
    """A demo shop page with a simple chat box on the websocket."""
    return render(request, "chatbot/demo.html")


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
