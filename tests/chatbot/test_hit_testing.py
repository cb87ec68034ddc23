"""Hit testing (chatbot.evaluation): the page of the entries admin and manage.py kb_hittest ask
labelled questions through the live pipeline and report what the bot would do."""

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from tests.factories import entries_create, kb_embed_and_publish, upload

pytestmark = pytest.mark.django_db


def test_entries_change_list_links_to_hit_testing(editor_client):
    page = editor_client.get("/admin/kb/entry/").content.decode()
    assert 'href="/admin/kb/entry/hit-testing/"' in page and 'href="/admin/kb/entry/import/"' in page
    assert page.index("hit-testing/") < page.index("import/")


def test_hit_testing_page_shows_decisions_from_the_live_pipeline(editor_client):
    entries = entries_create()
    kb_embed_and_publish()
    response = editor_client.post(
        "/admin/kb/entry/hit-testing/",
        {
            "questions": "where is my parcel?\n\nwhat is the meaning of life?",
        },
    )
    body = response.content.decode()
    rows = body.split("<tbody>")[1].split("</tbody>")[0].split("<tr>")[1:]
    assert len(rows) == 2
    assert "decision-faq" in rows[0] and f"#{entries[0].id} How do I track my order?" in rows[0]
    assert "best score reaches the answer threshold" in rows[0]
    assert "decision-handoff" in rows[1] and "below the answer threshold" in rows[1]


def test_batch_hit_testing_reports_accuracy_and_misses(editor_client, tmp_path, capsys):
    entries = entries_create()
    kb_embed_and_publish()
    labelled = tmp_path / "labelled.csv"
    labelled.write_text(
        "question,expected\n"
        f"where is my parcel?,{entries[0].id}\n"
        "can I pay by paypal,Which payment methods do you accept?\n"
        f"I forgot my password,{entries[1].id}\n"
        "ghost,no such entry\n"
    )
    out = io.StringIO()
    call_command("kb_hittest", str(labelled), stdout=out, verbosity=0)
    text = out.getvalue()
    assert "questions: 3" in text and "top-1 accuracy: 66.7% of 3 in-scope questions" in text
    assert "'I forgot my password': expected" in text and "How do I reset my password?" in text
    assert "row 4: no entry with id or question 'no such entry'" in capsys.readouterr().err
    page = editor_client.post("/admin/kb/entry/hit-testing/", {"file": upload("labelled.csv", labelled.read_bytes())})
    body = page.content.decode()
    assert "top-1 accuracy 67% of 3" in body and "I forgot my password" in body


def test_hit_testing_needs_permission_to_view_entries(client):
    # Issue 10: a staff user without any KB permission got the page (entry questions disclosed)
    # and could run batch uploads.
    from django.contrib.auth.models import Permission

    entries_create()
    staff = get_user_model().objects.create_user("ops", "ops@example.com", "pw-123456", is_staff=True)
    client.force_login(staff)
    assert client.get("/admin/kb/entry/hit-testing/").status_code == 403
    posted = client.post("/admin/kb/entry/hit-testing/", {"file": upload("q.csv", b"question,expected\nhi,1\n")})
    assert posted.status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_entry"))
    staff = get_user_model().objects.get(pk=staff.pk)  # permissions are cached per user object
    client.force_login(staff)
    assert client.get("/admin/kb/entry/hit-testing/").status_code == 200


def test_hit_testing_refuses_an_oversized_upload(editor_client, monkeypatch):
    from chatbot.evaluation import admin as evaluation_admin

    monkeypatch.setattr(evaluation_admin, "MAX_UPLOAD_BYTES", 100)
    response = editor_client.post("/admin/kb/entry/hit-testing/", {"file": upload("q.csv", b"question\n" + b"x" * 200)})
    assert response.status_code == 200 and "The file is over" in response.content.decode()


GIFT_CARDS = [
    {
        "question": "How do I buy a gift card?",
        "answer": "They are sold on the Gift cards page.",
        "variants": ["gift card"],
    },
    {"question": "How do I redeem a gift card?", "answer": "Enter the code at checkout.", "variants": ["gift card"]},
]


def test_each_hit_shows_the_phrasing_that_matched_and_the_entry_it_belongs_to(editor_client):
    track = entries_create()[0]
    kb_embed_and_publish()
    body = editor_client.post("/admin/kb/entry/hit-testing/", {"questions": "track my parcel"}).content.decode()
    first_hit = body.split('<li class="hit">')[1].split("</li>")[0]
    # Matched by one of its phrasings, shown with the entry's question, category and answer start.
    assert "“track my parcel”" in first_hit and f"#{track.id} How do I track my order?" in first_hit
    assert "· orders" in first_hit and "Open Account &gt; Orders and click Track package." in first_hit
    assert "≥ answer 0." in first_hit


def test_one_click_adds_the_tested_question_as_a_phrasing_of_the_chosen_entry(editor_client, client):
    track, returns, *_ = entries_create()
    kb_embed_and_publish()
    page = editor_client.post("/admin/kb/entry/hit-testing/", {"questions": "parcel whereabouts"}).content.decode()
    assert 'name="add_phrasing" value="parcel whereabouts"' in page
    posted = {"questions": "parcel whereabouts", "add_phrasing": "parcel whereabouts", "entry_id": str(track.id)}
    page = editor_client.post("/admin/kb/entry/hit-testing/", posted).content.decode()
    assert "Added “parcel whereabouts” as a phrasing of" in page and "<table" in page  # the results again
    assert track.variants.filter(text="parcel whereabouts", is_dirty=True).exists()
    # Twice: refused with the reason. Another entry by its number.
    again = editor_client.post("/admin/kb/entry/hit-testing/", posted).content.decode()
    assert "already has the phrasing" in again
    other = {**posted, "other_entry_id": f"#{returns.id}"}
    editor_client.post("/admin/kb/entry/hit-testing/", other)
    assert returns.variants.filter(text="parcel whereabouts").exists()
    missing = editor_client.post("/admin/kb/entry/hit-testing/", {**posted, "other_entry_id": "99999"})
    assert "No entry #99999: nothing was added." in missing.content.decode()

    # Who may only view entries sees no button and cannot add.
    from django.contrib.auth.models import Permission

    viewer = get_user_model().objects.create_user("viewer", password="pw-viewer-123", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_entry"))
    client.force_login(viewer)
    assert "add_phrasing" not in client.post("/admin/kb/entry/hit-testing/", {"questions": "x"}).content.decode()
    assert client.post("/admin/kb/entry/hit-testing/", {**posted, "entry_id": str(returns.id)}).status_code == 403


def test_the_batch_report_lists_every_failure_by_kind_and_exports_them(editor_client):
    import base64
    import csv

    entries = {entry.question: entry for entry in entries_create() + entries_create(GIFT_CARDS)}
    kb_embed_and_publish()
    labelled = (
        "question,expected\n"
        "where is my parcel?,How do I track my order?\n"  # right
        "I forgot my password,How do I track my order?\n"  # answered, from another entry
        "gift card,How do I buy a gift card?\n"  # two entries equally close: did you mean
        "what is the meaning of life?,What is your return policy?\n"  # not answered: the hand-off
        "=cmd|' /C calc'!A0,What is your return policy?\n"
    )
    body = editor_client.post(
        "/admin/kb/entry/hit-testing/", {"file": upload("labelled.csv", labelled.encode())}
    ).content.decode()
    summary = body.split('id="hit-failures-summary">')[1].split("</p>")[0]
    assert "4 of 5 questions not answered right" in summary
    assert "<b>1</b> wrong answer, <b>1</b> did you mean, <b>2</b> fallback" in summary
    wrong = body.split('id="failures-wrong-answer"')[1].split("</table>")[0]
    assert "I forgot my password" in wrong and f"#{entries['How do I reset my password?'].id}" in wrong
    assert "gift card" in body.split('id="failures-did-you-mean"')[1].split("</table>")[0]
    assert "meaning of life" in body.split('id="failures-fallback"')[1].split("</table>")[0]

    href = body.split('id="hit-failures-csv" download="hit-test-failures.csv" href="')[1].split('"')[0]
    text = base64.b64decode(href.split("base64,")[1]).decode("utf-8-sig")
    rows = list(csv.DictReader(text.splitlines()))
    assert [(row["failure"], row["question"]) for row in rows] == [
        ("wrong answer", "I forgot my password"),
        ("did you mean", "gift card"),
        ("fallback", "what is the meaning of life?"),
        ("fallback", "'=cmd|' /C calc'!A0"),  # a formula is quoted, as in kb exports
    ]
