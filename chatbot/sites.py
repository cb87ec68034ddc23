"""Sites: which site a connection belongs to, whether a page may open the chat for it, and what the
widget shows. Every chat handshake looks its site up, so active sites are kept in process memory for
CHATBOT_SITE_CACHE_SECONDS (an admin edit applies within that; in the editing process at once)."""

from __future__ import annotations

import threading
import time

from django.conf import settings
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from chatbot import protocol
from chatbot.models import DEFAULT_SITE_KEY, Site, default_site_id, site_key_new
from chatbot.origins import origin_allowed, origin_listed
from chatbot.runtime import in_pool

# Unknown keys are remembered too (a page with a stale key reconnects again and again); the bound
# keeps a client that tries random keys from growing the cache without end.
_CACHE_MAX = 1000
_MISSING = object()
_cache: dict[tuple[str, object], tuple[float, Site | None]] = {}
_cache_lock = threading.Lock()


def sites_cache_clear() -> None:
    """Forget every site looked up: the next look-up of each reads the database."""
    with _cache_lock:
        _cache.clear()


def _cached(cache_key: tuple[str, object]):
    with _cache_lock:
        hit = _cache.get(cache_key)
    if hit is None or hit[0] < time.monotonic():
        return _MISSING
    return hit[1]


def _remember(cache_key: tuple[str, object], site: Site | None) -> Site | None:
    expires = time.monotonic() + settings.CHATBOT_SITE_CACHE_SECONDS
    with _cache_lock:
        if len(_cache) >= _CACHE_MAX:
            now = time.monotonic()
            for stale in [key for key, (until, _site) in _cache.items() if until < now]:
                del _cache[stale]
            while len(_cache) >= _CACHE_MAX:
                del _cache[next(iter(_cache))]  # the oldest entry
        _cache[cache_key] = (expires, site)
    return site


def _site_load(key: str) -> Site | None:
    if key == DEFAULT_SITE_KEY:
        default_site_id()  # the default site always exists (created again if it went missing)
    return Site.objects.filter(key=key, is_active=True).first()


def site_for_key(key: str) -> Site | None:
    """The active site with this public key, or None (unknown or inactive); cached. Synchronous:
    for views and the answer pool, never the event loop (see :func:`site_lookup`)."""
    site = _cached(("key", key))
    if site is _MISSING:
        site = _remember(("key", key), _site_load(key))
    return site


async def site_lookup(key: str) -> Site | None:
    """:func:`site_for_key` for the event loop: a cached site costs no thread hop; otherwise the
    database is read in the answer pool (chatbot.runtime.in_pool)."""
    site = _cached(("key", key))
    if site is _MISSING:
        site = await in_pool(site_for_key)(key)
    return site


def site_by_id(site_id: int) -> Site | None:
    """The site with this id (active or not), cached like :func:`site_for_key`. Synchronous."""
    site = _cached(("id", site_id))
    if site is _MISSING:
        site = _remember(("id", site_id), Site.objects.filter(pk=site_id).first())
    return site


def _llm_enabled(site_id: int) -> bool:
    site = site_by_id(site_id)
    return site is None or site.llm_enabled


async def site_llm_enabled(*, site_id: int) -> bool:
    """Whether the LLM fallback is on for the site with this id (cached like :func:`site_lookup`).
    Read per message, so switching it off in admin applies to open conversations too."""
    site = _cached(("id", site_id))
    if site is _MISSING:
        return await in_pool(_llm_enabled)(site_id)
    return site is None or site.llm_enabled


def site_origins(site: Site) -> list[str]:
    """The origins, besides the app's own, whose pages may use ``site``: its allowed origins, and
    for the default site also CHATBOT_ALLOWED_ORIGINS (the rule from before sites existed)."""
    if site.is_default:
        return [*settings.CHATBOT_ALLOWED_ORIGINS, *site.allowed_origins]
    return list(site.allowed_origins)


def site_origin_allowed(*, site: Site, origin: str | None, scope: dict) -> bool:
    """Whether a page on ``origin`` may open the chat socket for ``site`` on a connection with
    ``scope``: the app's own origin, or one of :func:`site_origins`, by scheme, host and port."""
    return origin_allowed(origin, scope, site_origins(site))


def site_cors_origin(*, site: Site, origin: str | None) -> str | None:
    """The ``Access-Control-Allow-Origin`` value for a request from ``origin`` about ``site``: the
    origin itself when the site allows it, else None (no header, so the browser withholds the body)."""
    return origin if origin_listed(origin, site_origins(site)) else None


def site_widget_config(*, site: Site) -> dict:
    """What the widget needs before it opens the socket: public, the same for every visitor."""
    return {
        "site": site.key,
        "name": site.name,
        "greeting": {"en": site.greeting_en, "zh": site.greeting_zh},
        "starter_questions": list(site.starter_questions),
        "colours": {"primary": site.primary_colour},
        "default_language": site.default_language,
        "protocol": protocol.PROTOCOL_VERSION,
    }


def site_key_rotate(*, site: Site) -> str:
    """Give ``site`` a new public key and return it; the old key stops working (in other web
    processes within CHATBOT_SITE_CACHE_SECONDS). The default site's key is fixed: it is the site
    of sockets that name none. Raises ValueError for it."""
    if site.is_default:
        raise ValueError("the default site's key cannot be rotated")
    site.key = site_key_new()
    site.save(update_fields=["key", "updated_at"])
    return site.key


@receiver(post_save, sender=Site)
@receiver(post_delete, sender=Site)
def _site_changed(sender, **kwargs) -> None:
    # The process that saved a site sees the change at once; the others within the cache's lifetime.
    sites_cache_clear()
