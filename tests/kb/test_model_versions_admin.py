"""Model versions in the admin: the list with scores, "Tune now", and switching (the rollback) from a
confirmation page. The version switched to here is a copy of the base model's files under another
label: a real model directory, loaded and embedded with like any tuned version, without training."""

from __future__ import annotations

import shutil

import pytest
from django.urls import reverse

from kb.embedders import model_path_resolve
from kb.embedding_models import embedding_model_active
from kb.models import EmbeddingModel, IndexVersion, Variant
from kb.selectors import current_index
from tests.factories import entries_create, kb_embed_and_publish

SCORES = {
    "compared_with": "base",
    "active": {"top1": 0.9, "recall5": 0.99, "mrr": 0.94, "f1": 0.7, "threshold": 0.8},
    "tuned": {"top1": 0.93, "recall5": 0.99, "mrr": 0.96, "f1": 0.75, "threshold": 0.8},
    "p_top1": 0.001,
    "p_f1": 0.01,
}


@pytest.fixture
def copied_version(db, settings):
    settings.KB_EMBEDDER_RUNTIME = "torch"  # no ONNX export of the copy (see test_kb_tune)
    entries_create()
    kb_embed_and_publish()
    shutil.copytree(model_path_resolve(settings.KB_EMBEDDER_MODEL), settings.KB_MODEL_DIR / "copy-1")
    return EmbeddingModel.objects.create(
        label="copy-1",
        directory="copy-1",
        parent=embedding_model_active(),
        state=EmbeddingModel.State.AVAILABLE,
        reason="a test copy",
        scores=SCORES,
        data={"entries": 4, "train_phrasings": 10, "held_out": 3, "out_of_scope": 2},
        training_seconds=90,
    )


def test_the_list_shows_each_version_with_its_scores_and_a_switch_for_kept_ones(copied_version, editor_client):
    page = editor_client.get(reverse("admin:kb_embeddingmodel_changelist")).content.decode()
    assert "base" in page and "copy-1" in page
    assert "90.0% → 93.0%" in page and "0.700 → 0.750" in page and "0.001, 0.01" in page
    assert "1.5 min" in page and "10 of 4 entries (3 + 2)" in page
    assert reverse("admin:kb_embeddingmodel_switch", args=[copied_version.pk]) in page
    assert 'id="tune-now"' in page


def test_an_adapter_only_version_shows_the_adapter_scores(db, editor_client):
    EmbeddingModel.objects.create(
        label="tuned-7",
        directory="tuned-7",
        parent=embedding_model_active(),
        state=EmbeddingModel.State.REFUSED,
        reason="English model: declined: ...; USE adapter not better than base beyond noise: ...",
        scores={"use_adapter": SCORES},
        data={"use_adapter": {"entries": 16, "train_phrasings": 168, "held_out": 42, "out_of_scope": 32}},
        training_seconds=3,
    )
    page = editor_client.get(reverse("admin:kb_embeddingmodel_changelist")).content.decode()
    assert "USE adapter 90.0% → 93.0%" in page and "USE adapter 0.700 → 0.750" in page
    assert "USE adapter 0.001, 0.01" in page and "USE adapter 168 of 16 entries (42 + 32)" in page


def test_switching_from_the_admin_and_back(copied_version, editor_client):
    base = embedding_model_active()
    url = reverse("admin:kb_embeddingmodel_switch", args=[copied_version.pk])
    page = editor_client.get(url).content.decode()
    assert "Active now: <b>base</b>" in page and 'id="switch-confirm"' in page
    response = editor_client.post(url, follow=True)
    assert "Copy-1 is active: index v" in response.content.decode()  # the admin capitalises messages
    live = IndexVersion.objects.latest("id")
    assert live.embedding_model == copied_version and embedding_model_active() == copied_version
    assert set(Variant.objects.values_list("embedding_model", flat=True)) == {copied_version.pk}
    assert current_index.get().model_directory == "copy-1"
    copied_version.refresh_from_db()
    assert copied_version.data["switches"][-1]["from"] == "base"

    # And back: one click, the base vectors as they were.
    back = reverse("admin:kb_embeddingmodel_switch", args=[base.pk])
    editor_client.post(back)
    assert embedding_model_active() == base
    assert IndexVersion.objects.latest("id").embedding_model == base
    assert current_index.get().model_directory == ""
    # The active one has no switch button; switching to it again is refused with a message.
    response = editor_client.post(back, follow=True)
    assert "already the active model" in response.content.decode()


def test_tune_now_queues_a_run_and_others_may_not(copied_version, editor_client, client, django_user_model):
    response = editor_client.post(reverse("admin:kb_embeddingmodel_tune"), follow=True)
    page = response.content.decode()
    assert "Tuning queued" in page or "Could not queue the tuning run" in page
    staff = django_user_model.objects.create_user("viewer", password="pw-viewer-123", is_staff=True)
    client.force_login(staff)
    assert client.post(reverse("admin:kb_embeddingmodel_tune")).status_code in (302, 403)
    assert client.post(reverse("admin:kb_embeddingmodel_switch", args=[copied_version.pk])).status_code in (302, 403)
    assert embedding_model_active().label == "base"
