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
