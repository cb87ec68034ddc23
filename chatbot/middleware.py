"""Middleware of the chat app."""

from chatbot import views

PROBES = {"/healthz": views.healthz, "/readyz": views.readyz, "/metrics": views.metrics}


class ProbeMiddleware:
    """Answers /healthz, /readyz and /metrics before any other middleware runs.

    Health checkers and scrapers reach a web process by its container name or pod address, which is
    not in DJANGO_ALLOWED_HOSTS, and over plain HTTP, which production's SSL redirect would bounce:
    these answers build no URL from the Host header, so neither check is needed for them. /metrics
    has its own access check (chatbot.views.metrics_allowed)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        probe = PROBES.get(request.path_info)
        if probe is not None and request.method in ("GET", "HEAD"):
            return probe(request)
        return self.get_response(request)
