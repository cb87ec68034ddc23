"""HTTP views of the customer side: the demo page, a site's widget settings, health, readiness and
metrics."""

import functools
import gc
import hmac
import ipaddress
import logging
import os

from django.conf import settings
from django.http import HttpResponse, HttpResponseForbidden, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_safe

from chatbot import protocol
from chatbot.health import health_report
from chatbot.metrics import metrics_render
from chatbot.sites import site_cors_origin, site_for_key, site_widget_config
from kb.models import Entry
from kb.query_batching import query_batching_stats
from kb.selectors import current_index

logger = logging.getLogger(__name__)


def demo_page(request):
    """A demo shop page: a host page that embeds the chat widget with its script tag."""
    return render(request, "chatbot/demo.html")


@require_safe
def faq_entry(request, entry_id):
    """One published FAQ entry as a public page: where the widget's citations link to."""
    entry = get_object_or_404(Entry, id=entry_id, is_published=True)
    return render(request, "chatbot/faq_entry.html", {"entry": entry})


def protocol_schema(request):
    """The chat protocol's JSON Schema (chatbot.protocol), for widget and client builders."""
    return JsonResponse(protocol.protocol_schema(), json_dumps_params={"ensure_ascii": False})


# The widget fetches its site's settings on every page view of the host site: browsers and CDNs may
# keep them this long (an admin edit shows within it; the socket checks origins itself).
WIDGET_CONFIG_MAX_AGE = 300


@require_safe
def widget_site_config(request, key):
    """A site's public widget settings (chatbot.sites.site_widget_config), readable by pages on the
    site's allowed origins (CORS); 404 for an unknown or inactive key. No authentication."""
    site = site_for_key(key)
    if site is None:
        return JsonResponse({"detail": "No active site has this key."}, status=404)
    settings_for_widget = {
        **site_widget_config(site=site),
        # Where a citation links: this app's public page of the cited entry.
        "faq_url": request.build_absolute_uri(reverse("faq-entry", args=[0])).removesuffix("0") + "{id}",
    }
    response = JsonResponse(settings_for_widget, json_dumps_params={"ensure_ascii": False})
    response["Cache-Control"] = f"public, max-age={WIDGET_CONFIG_MAX_AGE}"
    # The allowed origin is echoed, so a shared cache must keep one copy per Origin.
    patch_vary_headers(response, ["Origin"])
    allowed = site_cors_origin(site=site, origin=request.headers.get("Origin"))
    if allowed:
        response["Access-Control-Allow-Origin"] = allowed
    return response


def healthz(request):
    """Health of this web process (database and Redis reachable) with the index versions, for
    docker-compose's healthcheck and monitors: 200, or 503 when a dependency is down
    (chatbot.health)."""
    healthy, report = health_report()
    return JsonResponse(report, status=200 if healthy else 503)


# A request that came through a proxy: its REMOTE_ADDR is the proxy's (or the forwarded client's).
PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


@functools.lru_cache(maxsize=8)
def _networks(allowed: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in allowed)


def metrics_allowed(request) -> bool:
    """Whether ``request`` may read /metrics: it carries ``Authorization: Bearer <METRICS_TOKEN>``
    (when a token is set), or it comes straight (through no proxy) from an address in
    METRICS_ALLOWED_IPS (addresses or networks; loopback by default)."""
    token = settings.METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return True
    # Behind a reverse proxy on the same host every outside request would come from 127.0.0.1:
    # a proxied request is never let in by its address.
    if any(header in request.headers for header in PROXY_HEADERS):
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:  # no client address (a unix socket)
        return False
    address = getattr(address, "ipv4_mapped", None) or address
    return any(address in network for network in _networks(tuple(settings.METRICS_ALLOWED_IPS)))


def metrics(request):
    """Prometheus metrics (chatbot.metrics) for scrapers METRICS_ALLOWED_IPS or METRICS_TOKEN let in."""
    if not metrics_allowed(request):
        return HttpResponseForbidden("metrics: not from this address without the token\n", content_type="text/plain")
    body, content_type = metrics_render()
    return HttpResponse(body, content_type=content_type)


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
        # Objects kept out of the cycle collector's full collections (chatbot.runtime).
        "frozen_objects": gc.get_freeze_count(),
    }
    if ready:
        return JsonResponse(body)
    body["reason"] = (
        "this process has not loaded an index yet"
        if current_index.background
        else "this process does not serve chat (no background index loader was started)"
    )
    response = JsonResponse(body, status=503)
    # "Not ready yet" is the answer every start-up gives its probes, not a server error: Django
    # would log each one at ERROR (django.request) unless told the response is logged already.
    response._has_been_logged = True
    logger.info("not ready: %s", body["reason"])
    return response
