"""Admin import uploads staged between the preview and the confirmation (kb.services.import_upload_*),
on Django's storage API so that any web process or host can confirm what another previewed."""

import re

import pytest
from django.core.files.storage import storages

from kb import services


def staging_storage(settings, **backend) -> None:
    """Point the kb_imports storage at ``backend``; assigning STORAGES makes Django build it anew."""
    settings.STORAGES = {**settings.STORAGES, services.IMPORT_STORAGE: backend}


@pytest.fixture(autouse=True)
def fresh_storage(settings):
    staging_storage(settings, BACKEND="django.core.files.storage.InMemoryStorage")


def staged_names() -> list[str]:
    return storages[services.IMPORT_STORAGE].listdir("")[1]


def test_a_staged_upload_is_read_back_by_its_token_until_discarded():
    token = services.import_upload_stage(name="Shop FAQ.CSV", content=b"question,answer\nQ,A\n")
    assert re.fullmatch("[0-9a-f]{32}", token)
    staged = services.import_upload_get(token=token)
    # The suffix is kept (lower-cased): it tells the readers the format.
    assert (staged.token, staged.name, staged.content) == (token, f"{token}.csv", b"question,answer\nQ,A\n")
    services.import_upload_discard(token=token)
    assert services.import_upload_get(token=token) is None and staged_names() == []
    services.import_upload_discard(token=token)  # twice (a double click): nothing to do


@pytest.mark.parametrize("token", ["", "abc", "../../etc/passwd", "0" * 31 + "g", "0" * 32])
def test_malformed_and_unknown_tokens_read_nothing(token):
    services.import_upload_stage(name="faq.json", content=b"[]")
    assert services.import_upload_get(token=token) is None


def test_an_expired_upload_is_not_read_and_is_removed(settings):
    token = services.import_upload_stage(name="faq.json", content=b"[]")
    settings.KB_IMPORT_STAGING_SECONDS = 0
    assert services.import_upload_get(token=token) is None
    assert staged_names() == []


def test_old_uploads_are_pruned_and_staging_prunes_first(settings):
    first = services.import_upload_stage(name="a.csv", content=b"a")
    second = services.import_upload_stage(name="b.xlsx", content=b"b")
    assert services.import_uploads_prune() == 0
    assert sorted(staged_names()) == sorted([f"{first}.csv", f"{second}.xlsx"])
    settings.KB_IMPORT_STAGING_SECONDS = 0
    third = services.import_upload_stage(name="c.json", content=b"c")  # removes the two older ones
    assert staged_names() == [f"{third}.json"]
    assert services.import_uploads_prune() == 1 and staged_names() == []


def test_another_web_host_on_the_shared_storage_reads_the_upload(settings, tmp_path):
    shared = {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path)}}
    staging_storage(settings, **shared)
    token = services.import_upload_stage(name="faq.csv", content=b"question,answer\n")
    staging_storage(settings, **shared)  # a new storage object, as another process builds its own
    assert services.import_upload_get(token=token).content == b"question,answer\n"
    assert [path.name for path in tmp_path.iterdir()] == [f"{token}.csv"]


def test_an_empty_file_system_storage_has_nothing_to_prune(settings, tmp_path):
    staging_storage(
        settings,
        BACKEND="django.core.files.storage.FileSystemStorage",
        OPTIONS={"location": str(tmp_path / "not-created-yet")},
    )
    assert services.import_uploads_prune() == 0
    assert services.import_upload_get(token="0" * 32) is None
