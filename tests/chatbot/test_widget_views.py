"""/widget.js: the loader customer sites embed (chatbot.widget_views)."""

import re

from django.core.management import call_command

from chatbot import widget_views


def test_the_loader_names_every_widget_file_and_language_by_a_content_version(client):
    response = client.get("/widget.js")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/javascript; charset=utf-8"
    assert response["Cache-Control"] == "public, max-age=300"
    assert response["Access-Control-Allow-Origin"] == "*"
    body = response.content.decode()
    files = re.findall(r'"(/static/chatbot/widget/[^"]+)"', body)
    assert [re.sub(r"\?v=[0-9a-f]{12}$", "", name) for name in files] == [
        "/static/chatbot/widget/styles.js",
        "/static/chatbot/widget/markdown.js",
        "/static/chatbot/widget/widget.js",
        "/static/chatbot/widget/i18n/en.json",
        "/static/chatbot/widget/i18n/zh-Hans.json",
    ]
    assert all(re.search(r"\?v=[0-9a-f]{12}$", name) for name in files)
    assert widget_views.widget_languages() == ["en", "zh-Hans"]


def test_an_unchanged_loader_is_answered_304_by_its_etag(client):
    etag = client.get("/widget.js")["ETag"]
    again = client.get("/widget.js", headers={"If-None-Match": etag})
    assert (again.status_code, again.content, again["ETag"]) == (304, b"", etag)
    assert client.post("/widget.js").status_code == 405


def test_a_widget_file_edit_changes_its_url(monkeypatch):
    before, _etag = widget_views.widget_loader()
    real = widget_views._static_url
    monkeypatch.setattr(widget_views, "_static_url", lambda name: real(name).replace("?v=", "?v=edited"))
    after, _etag = widget_views.widget_loader()
    assert before != after


def test_under_a_manifest_storage_the_loader_uses_hashed_compressed_names(settings, tmp_path):
    # Production's storage (config/settings/production.py); Django resets staticfiles_storage on the change.
    settings.STATIC_ROOT = tmp_path
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
    call_command("collectstatic", "--noinput", verbosity=0)
    for name in ("chatbot/widget/widget.js", "chatbot/widget/i18n/en.json"):
        url = widget_views._static_url(name)
        stem, extension = name.rsplit(".", 1)
        assert re.fullmatch(rf"/static/{re.escape(stem)}\.[0-9a-f]{{12}}\.{extension}", url)
        # whitenoise serves the compressed copy collectstatic wrote next to it.
        assert (tmp_path / (url.removeprefix("/static/") + ".gz")).exists()
