"""``/widget.js``: the stable URL customer sites embed. It answers a tiny loader, cached briefly (so a
new release reaches every site within WIDGET_LOADER_MAX_AGE), that adds the versioned widget files
from static storage: hashed names under a manifest storage (production: whitenoise serves them
compressed and cached for a year), else ``?v=<content hash>``. The widget's own code lives in
``chatbot/static/chatbot/widget/``; one JSON file per UI language in its ``i18n/`` folder."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from django.conf import settings
from django.contrib.staticfiles import finders
from django.contrib.staticfiles.storage import ManifestFilesMixin, staticfiles_storage
from django.http import HttpResponse
from django.views.decorators.http import require_safe

WIDGET_DIR = "chatbot/widget"
# Executed in this order (the loader adds them with async=false); the last one reads the embed's
# data-* attributes, which the loader copies onto it.
WIDGET_FILES = ("styles.js", "markdown.js", "widget.js")
I18N_DIR = Path(__file__).parent / "static" / WIDGET_DIR / "i18n"
WIDGET_LOADER_MAX_AGE = 300

LOADER = """/* SupportChat loader: %(doc)s */
(function (d) {
  var tag = d.currentScript;
  if (!tag || window.SupportChat) return;
  var files = %(files)s, last = files.length - 1, langs = %(langs)s;
  for (var code in langs) langs[code] = new URL(langs[code], tag.src).href;
  files.forEach(function (path, i) {
    var s = d.createElement("script");
    s.src = new URL(path, tag.src).href;
    s.async = false;
    if (i === last) {
      for (var k in tag.dataset) s.dataset[k] = tag.dataset[k];
      s.dataset.langs = JSON.stringify(langs);
    }
    (d.head || d.documentElement).appendChild(s);
  });
})(document);
"""


def _static_url(name: str) -> str:
    """The URL path of a static file that changes whenever its content does."""
    if isinstance(staticfiles_storage, ManifestFilesMixin):
        return staticfiles_storage.url(name)
    path = finders.find(name)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12] if path else "0"
    return f"{staticfiles_storage.url(name)}?v={digest}"


def widget_languages() -> list[str]:
    """The widget's UI languages: one JSON file each in its i18n folder (adding one adds a language)."""
    return sorted(path.stem for path in I18N_DIR.glob("*.json"))


def _loader_build() -> tuple[str, str]:
    files = [_static_url(f"{WIDGET_DIR}/{name}") for name in WIDGET_FILES]
    langs = {code: _static_url(f"{WIDGET_DIR}/i18n/{code}.json") for code in widget_languages()}
    body = LOADER % {
        "doc": "loads the versioned widget files; embed it as <script src=.../widget.js data-site=KEY async>",
        "files": json.dumps(files),
        "langs": json.dumps(langs, ensure_ascii=False),
    }
    return body, hashlib.sha256(body.encode()).hexdigest()[:16]


_loader_cached = functools.cache(_loader_build)


def widget_loader() -> tuple[str, str]:
    """The loader's JavaScript and its ETag. Built once per process, except where static files are
    edited live (local settings' WHITENOISE_AUTOREFRESH)."""
    if getattr(settings, "WHITENOISE_AUTOREFRESH", False):
        return _loader_build()
    return _loader_cached()


@require_safe
def widget_js(request):
    body, etag = widget_loader()
    quoted = f'"{etag}"'
    if quoted in request.headers.get("If-None-Match", ""):
        response = HttpResponse(status=304)
    else:
        response = HttpResponse(body, content_type="text/javascript; charset=utf-8")
    response["ETag"] = quoted
    response["Cache-Control"] = f"public, max-age={WIDGET_LOADER_MAX_AGE}"
    # Any site may load it (it is public code); no cookies are involved.
    response["Access-Control-Allow-Origin"] = "*"
    response["Cross-Origin-Resource-Policy"] = "cross-origin"
    return response
