"""Sites (issue 11): validation, admin, the origin check at the handshake through the real ASGI
application, conversations recording their site, the per-site LLM switch, the widget's settings
endpoint, and the migration that turned free-text site names into sites."""

import uuid

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from chatbot.models import DEFAULT_SITE_KEY, Conversation, Site
from chatbot.origins import origin_normalise
from chatbot.protocol import PROTOCOL_VERSION
from chatbot.sites import site_for_key
from config.asgi import application
from tests.llm_server import cited

SHOP = "https://shop.example"
HOST = [(b"host", b"localhost:8000")]  # the app's own origin is then http://localhost:8000


def site_create(**fields) -> Site:
    site = Site(**{"name": "Shop", "allowed_origins": [SHOP], **fields})
    site.full_clean()
    site.save()
    return site


# --- Validation -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_origins_are_stored_normalised():
    site = site_create(
        allowed_origins=[
            "HTTPS://Shop.Example:443/",
            "http://localhost:8000",
            " ",
            "https://shop.example",
            "http://[::1]:80",
            "https://Bücher.example",
        ]
    )
    site.refresh_from_db()
    assert site.allowed_origins == [
        "https://shop.example",
        "http://localhost:8000",
        "http://[::1]",
        "https://xn--bcher-kva.example",
    ]


@pytest.mark.parametrize(
    "bad",
    [
        "shop.example",  # no scheme
        "ftp://shop.example",
        "https://*.shop.example",
        "*",
        "https://shop.example/help",
        "https://shop.example?x=1",
        "https://user:pw@shop.example",
        "https://shop.example:99999",
        "https://",
    ],
)
@pytest.mark.django_db
def test_bad_origins_are_refused(bad):
    with pytest.raises(ValidationError) as raised:
        site_create(allowed_origins=[SHOP, bad])
    assert "allowed_origins" in raised.value.message_dict
    with pytest.raises(ValueError):
        origin_normalise(bad)


@pytest.mark.django_db
def test_colour_is_validated_and_lower_cased():
    assert site_create(primary_colour="#ABCDEF").primary_colour == "#abcdef"
    for bad in ("red", "#abc", "#12345g", "123456"):
        with pytest.raises(ValidationError) as raised:
            site_create(primary_colour=bad)
        assert "primary_colour" in raised.value.message_dict


@pytest.mark.django_db
def test_each_site_gets_its_own_url_safe_key_and_the_default_site_exists():
    first, second = site_create(), site_create(name="Other")
    assert first.key != second.key and len(first.key) >= 20
    assert all(char.isalnum() or char in "-_" for char in first.key)
    default = Site.objects.get(key=DEFAULT_SITE_KEY)  # created by the data migration
    assert default.is_default and default.is_active
    assert Conversation.objects.create().site == default  # a conversation without a site is the default's


# --- Admin ------------------------------------------------------------------------------------------


SITE_FORM = {
    "name": "Shop EU",
    "allowed_origins": "https://Shop.Example\n\nhttp://localhost:3000/",
    "is_active": "on",
    "llm_enabled": "on",
    "greeting_en": "Hello!",
    "greeting_zh": "您好！",
    "starter_questions": "Where is my parcel?\nCan I pay with PayPal?",
    "primary_colour": "#B4441C",
    "default_language": "zh",
}


@pytest.mark.django_db
def test_admin_creates_a_site_with_normalised_origins(editor_client):
    response = editor_client.post("/admin/chatbot/site/add/", SITE_FORM)
    assert response.status_code == 302, response.content.decode()[:2000]
    site = Site.objects.get(name="Shop EU")
    assert site.allowed_origins == ["https://shop.example", "http://localhost:3000"]
    assert site.starter_questions == ["Where is my parcel?", "Can I pay with PayPal?"]
    assert (site.primary_colour, site.default_language, site.greeting_zh) == ("#b4441c", "zh", "您好！")
    assert len(site.key) >= 20
    listing = editor_client.get("/admin/chatbot/site/", {"q": "shop.example"}).content.decode()
    assert "Shop EU" in listing and site.key in listing


@pytest.mark.django_db
def test_admin_refuses_a_bad_origin_and_a_bad_colour(editor_client):
    response = editor_client.post(
        "/admin/chatbot/site/add/",
        {**SITE_FORM, "allowed_origins": "https://shop.example/help", "primary_colour": "red"},
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "no path" in str(errors["allowed_origins"]) and "#rrggbb" in str(errors["primary_colour"])
    assert not Site.objects.filter(name="Shop EU").exists()


@pytest.mark.django_db
def test_admin_edits_a_site_without_touching_its_key(editor_client):
    site = site_create()
    page = editor_client.get(f"/admin/chatbot/site/{site.pk}/change/").content.decode()
    assert site.key in page and 'name="key"' not in page  # shown, not editable
    response = editor_client.post(f"/admin/chatbot/site/{site.pk}/change/", {**SITE_FORM, "name": "Shop"})
    assert response.status_code == 302
    edited = Site.objects.get(pk=site.pk)
    assert (edited.key, edited.greeting_en, edited.default_language) == (site.key, "Hello!", "zh")


@pytest.mark.django_db
def test_admin_rotates_keys_by_action_and_on_the_page_but_never_the_default_sites(editor_client):
    site, default = site_create(), Site.objects.get(key=DEFAULT_SITE_KEY)
    old_key = site.key
    assert site_for_key(old_key) == site  # cached: rotating must not leave the old key working here
    response = editor_client.post(
        "/admin/chatbot/site/", {"action": "rotate_keys", "_selected_action": [site.pk, default.pk]}, follow=True
    )
    assert "the default site&#x27;s key is fixed" in response.content.decode()
    site.refresh_from_db()
    assert site.key != old_key and Site.objects.get(pk=default.pk).key == DEFAULT_SITE_KEY
    assert site_for_key(old_key) is None and site_for_key(site.key) == site

    by_page = site.key
    response = editor_client.post(
        f"/admin/chatbot/site/{site.pk}/change/", {**SITE_FORM, "name": "Shop", "rotate_key": "on"}
    )
    assert response.status_code == 302
    site.refresh_from_db()
    assert site.key != by_page
    response = editor_client.post(
        f"/admin/chatbot/site/{default.pk}/change/", {**SITE_FORM, "name": "Default", "rotate_key": "on"}
    )
    assert response.status_code == 200 and "key is fixed" in response.content.decode()


@pytest.mark.django_db
def test_transcript_admin_shows_the_sites_name(editor_client):
    conversation = Conversation.objects.create(site=site_create(name="Shop Europe"))
    assert "Shop Europe" in editor_client.get("/admin/chatbot/conversation/").content.decode()
    assert "Shop Europe" in editor_client.get(f"/admin/chatbot/conversation/{conversation.pk}/change/").content.decode()


# --- The handshake ------------------------------------------------------------------------------------


async def connect(query="", origin=SHOP):
    headers = HOST + ([(b"origin", origin.encode())] if origin else [])
    communicator = WebsocketCommunicator(application, f"/ws/chat/{query}", headers=headers)
    connected, _ = await communicator.connect()
    if connected:
        session = await communicator.receive_json_from()
        assert session["type"] == "session"
        communicator.session = session
    return communicator, connected


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (SHOP, True),  # listed
        ("https://shop.example:443", True),  # the same origin, default port spelt out
        ("http://localhost:8000", True),  # the app's own pages
        ("https://evil.example", False),
        ("https://shop.example:8443", False),  # another port
        ("http://shop.example", False),  # another scheme
        ("https://cdn.shop.example", False),  # a subdomain is another origin
        ("https://listed-for-default.example", False),  # CHATBOT_ALLOWED_ORIGINS is the default site's
        (None, False),
    ],
)
async def test_a_sites_socket_is_accepted_only_from_its_origins(settings, origin, allowed):
    settings.CHATBOT_ALLOWED_ORIGINS = ["https://listed-for-default.example"]
    site = await database_sync_to_async(site_create)()
    chat, connected = await connect(f"?site={site.key}", origin)
    assert connected is allowed
    if connected:
        await chat.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_unknown_and_inactive_keys_are_refused():
    site = await database_sync_to_async(site_create)(is_active=False)
    for query in (f"?site={site.key}", "?site=no-such-key", f"?site={site.key}x"):
        _, connected = await connect(query)
        assert not connected, query
    _, connected = await connect(f"?site={site.key}", "http://localhost:8000")  # not even from our own pages
    assert not connected


@pytest.mark.django_db(transaction=True)
async def test_without_a_site_the_default_site_and_todays_rules_apply(settings):
    settings.CHATBOT_ALLOWED_ORIGINS = [SHOP]
    for query in ("", f"?site={DEFAULT_SITE_KEY}"):
        chat, connected = await connect(query, SHOP)
        assert connected
        await chat.disconnect()
    _, connected = await connect("", "https://evil.example")
    assert not connected


@pytest.mark.django_db(transaction=True)
async def test_a_site_switched_off_in_admin_is_refused_from_the_next_handshake():
    site = await database_sync_to_async(site_create)()
    chat, connected = await connect(f"?site={site.key}")
    assert connected
    site.is_active = False
    await database_sync_to_async(site.save)()  # clears this process's cache at once
    _, again = await connect(f"?site={site.key}")
    assert not again
    await chat.disconnect()


@pytest.mark.django_db
def test_looking_a_site_up_again_reads_no_database(django_assert_num_queries):
    site = site_create()
    assert site_for_key(site.key) == site and site_for_key("no-such-key") is None
    with django_assert_num_queries(0):
        assert site_for_key(site.key) == site
        assert site_for_key("no-such-key") is None  # unknown keys are remembered too


# --- Conversations and the LLM switch --------------------------------------------------------------------


async def ask(chat, text):
    client_id = str(uuid.uuid4())
    await chat.send_json_to({"type": "message", "id": client_id, "text": text})
    while True:
        frame = await chat.receive_json_from(timeout=20)
        if frame["type"] != "delta":
            return frame


async def test_conversations_record_their_site_and_resume_keeps_it(shop):
    site = await database_sync_to_async(site_create)(name="Shop Europe")
    chat, _ = await connect(f"?site={site.key}")
    assert (await ask(chat, "where is my parcel?"))["source"] == "faq"
    await chat.disconnect()
    conversation_id = chat.session["conversation"]
    stored = await database_sync_to_async(Conversation.objects.select_related("site").get)(id=conversation_id)
    assert stored.site == site and stored.site.name == "Shop Europe"
    # Resumed from the app's own page without ?site=, it stays the site's conversation.
    token = chat.session["resume_token"]
    again, connected = await connect(f"?conversation={conversation_id}&resume={token}", "http://localhost:8000")
    assert connected and again.session["resumed"] is True
    await again.disconnect()
    assert await database_sync_to_async(lambda: Conversation.objects.get(id=conversation_id).site_id)() == site.id
    # A socket without a site stores its conversation under the default site.
    plain, _ = await connect("", "http://localhost:8000")
    await ask(plain, "can I pay with paypal?")
    await plain.disconnect()
    default_id = await database_sync_to_async(
        lambda: Conversation.objects.get(id=plain.session["conversation"]).site.key
    )()
    assert default_id == DEFAULT_SITE_KEY


async def test_a_site_with_the_llm_off_answers_as_without_an_llm(shop, llm_server):
    llm_server.default = cited("Sorry, we only sell clothes.")
    site = await database_sync_to_async(site_create)()
    chat, _ = await connect(f"?site={site.key}")
    assert (await ask(chat, "Do you sell garden furniture?"))["source"] == "llm"
    requests = len(llm_server.completion_requests)
    assert requests >= 1

    site.llm_enabled = False
    await database_sync_to_async(site.save)()
    # The open conversation follows the switch from its next message: no LLM call, a person offered.
    answer = await ask(chat, "Do you sell garden furniture?")
    assert (answer["source"], answer["handoff"]) == ("handoff", "offered")
    assert len(llm_server.completion_requests) == requests
    stored = await database_sync_to_async(
        lambda: Conversation.objects.get(id=chat.session["conversation"]).messages.filter(role="bot").last()
    )()
    assert stored.decision["kind"] == "handoff" and "llm" not in stored.decision
    # FAQ answers are unaffected.
    assert (await ask(chat, "where is my parcel?"))["source"] == "faq"
    await chat.disconnect()


# --- The widget's settings endpoint ------------------------------------------------------------------------


@pytest.mark.django_db
def test_widget_config_is_public_cacheable_and_readable_only_from_the_sites_origins(client):
    site = site_create(
        name="Shop Europe",
        greeting_zh="您好",
        starter_questions=["Where is my parcel?"],
        primary_colour="#112233",
        default_language="zh",
    )
    response = client.get(f"/widget/sites/{site.key}.json", HTTP_ORIGIN=SHOP)
    assert response.status_code == 200
    assert response.json() == {
        "site": site.key,
        "name": "Shop Europe",
        "greeting": {"en": site.greeting_en, "zh": "您好"},
        "starter_questions": ["Where is my parcel?"],
        "colours": {"primary": "#112233"},
        "default_language": "zh",
        "protocol": PROTOCOL_VERSION,
        "faq_url": "http://testserver/faq/{id}",
    }
    assert response["Access-Control-Allow-Origin"] == SHOP
    assert "public" in response["Cache-Control"] and "max-age" in response["Cache-Control"]
    assert "Origin" in response["Vary"]
    for other in ("https://evil.example", "http://shop.example", None):
        headers = {"HTTP_ORIGIN": other} if other else {}
        response = client.get(f"/widget/sites/{site.key}.json", **headers)
        assert response.status_code == 200 and "Access-Control-Allow-Origin" not in response, other
    assert client.post(f"/widget/sites/{site.key}.json").status_code == 405


@pytest.mark.django_db
def test_widget_config_is_404_for_unknown_and_inactive_keys(client):
    site = site_create(is_active=False)
    assert client.get("/widget/sites/no-such-key.json", HTTP_ORIGIN=SHOP).status_code == 404
    response = client.get(f"/widget/sites/{site.key}.json", HTTP_ORIGIN=SHOP)
    assert response.status_code == 404 and "Access-Control-Allow-Origin" not in response


# --- The migration ------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_migration_maps_old_site_names_to_sites():
    executor = MigrationExecutor(connection)
    before, after = [("chatbot", "0005_site")], executor.loader.graph.leaf_nodes("chatbot")
    try:
        executor.migrate(before)
        old = executor.loader.project_state(before).apps
        OldConversation, OldSite = old.get_model("chatbot", "Conversation"), old.get_model("chatbot", "Site")
        OldSite.objects.all().delete()
        for name in ("default", "default", "shop-eu", "shop eu", "shop-eu"):
            OldConversation.objects.create(site=name)
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(after)
    finally:
        MigrationExecutor(connection).migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
    counts = {}
    for conversation in Conversation.objects.select_related("site"):
        counts[(conversation.site.name, conversation.site.key)] = (
            counts.get((conversation.site.name, conversation.site.key), 0) + 1
        )
    spaced = Site.objects.get(name="shop eu")
    assert counts == {
        ("Customer support", DEFAULT_SITE_KEY): 2,
        ("shop-eu", "shop-eu"): 2,  # a name that was a usable key stays the key
        ("shop eu", spaced.key): 1,
    }
    assert spaced.key != "shop eu" and spaced.is_active


@pytest.mark.django_db
def test_a_cited_entry_has_a_public_page_and_an_unpublished_one_does_not(client):
    from kb.models import Entry

    entry = Entry.objects.create(
        question="How do I return <b>shoes</b>?", answer="Within 30 days.\n<script>alert(1)</script>"
    )
    page = client.get(f"/faq/{entry.id}")
    text = page.content.decode()
    assert page.status_code == 200 and "How do I return &lt;b&gt;shoes&lt;/b&gt;?" in text
    assert "Within 30 days." in text and "<script>alert(1)" not in text
    Entry.objects.filter(id=entry.id).update(is_published=False)
    assert client.get(f"/faq/{entry.id}").status_code == 404
    assert client.get("/faq/999999").status_code == 404
