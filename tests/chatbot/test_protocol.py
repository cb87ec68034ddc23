"""The chat protocol module is the one definition of the frames: the docs' schema file, the
README's protocol table and the database columns all agree with it."""

import json
import re

import pytest
from django.conf import settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chatbot import protocol
from chatbot.models import Conversation, Message, Site
from kb.text import has_unwanted_characters

SCHEMA_FILE = settings.BASE_DIR / "docs" / "chat-protocol.schema.json"


def _frame_classes() -> list[tuple[str, type]]:
    """(type, class) of every frame of both directions ("message" and "typing" go both ways)."""
    return [
        (cls.__dataclass_fields__["type"].default, cls)
        for union in (protocol.ClientFrame, protocol.ServerFrame)
        for cls in union.__args__
    ]


def test_docs_schema_file_is_generated_from_the_protocol_module():
    # Regenerate with: .venv/bin/python manage.py chat_protocol_schema > docs/chat-protocol.schema.json
    assert SCHEMA_FILE.read_text() == protocol.protocol_schema_json()


def test_schema_is_served(client):
    response = client.get("/chat/protocol.schema.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["version"] == protocol.PROTOCOL_VERSION
    assert schema["$defs"]["MessageFrame"]["properties"]["text"]["maxLength"] == settings.CHATBOT_MAX_MESSAGE_CHARS
    assert set(schema["client_to_server"]["discriminator"]["mapping"]) == {
        "message",
        "choose",
        "ping",
        "feedback",
        "rating",
        "identify",
        "typing",
        "handoff_cancel",
    }


def test_limits_agree_with_the_columns_they_are_stored_in():
    assert protocol.CLIENT_ID_MAX_CHARS == Message._meta.get_field("client_id").max_length
    assert protocol.SITE_MAX_CHARS == Site._meta.get_field("key").max_length
    assert protocol.CUSTOMER_NAME_MAX_CHARS == Conversation._meta.get_field("customer_name").max_length
    assert protocol.CUSTOMER_EMAIL_MAX_CHARS == Conversation._meta.get_field("customer_email").max_length


def test_readme_protocol_table_names_every_frame_field_and_error_code():
    readme = (settings.BASE_DIR / "README.md").read_text()
    section = readme.split("## Chat protocol", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    documented_types = set(re.findall(r'"type": "(\w+)"', section))
    assert documented_types == {frame_type for frame_type, _cls in _frame_classes()}
    for frame_type, cls in _frame_classes():
        text = " ".join(row for row in rows if f'"type": "{frame_type}"' in row)
        for name in cls.__dataclass_fields__:
            name = name.rstrip("_")  # from_ is sent as "from"
            assert f'"{name}"' in text, f"README's protocol table: {frame_type} frame lacks {name!r}"
    for name in protocol.HistoryItem.__dataclass_fields__:
        assert f"`{name}`" in section, f"README's protocol section does not describe history item field {name!r}"
    for code in protocol.ERROR_CODES:
        assert f"`{code}`" in section, f"README's protocol section does not list error code {code!r}"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (None, "invalid_frame"),
        ("x" * (protocol.frame_max_chars() + 1), "frame_too_large"),
        ("{", "invalid_json"),
        ("[1]", "invalid_frame"),
        ('{"type": "shout"}', "unknown_type"),
        ('{"type": "message", "text": "hi"}', "invalid_id"),
        ('{"type": "message", "id": "' + "i" * 101 + '", "text": "hi"}', "invalid_id"),
        ('{"type": "message", "id": "a"}', "missing_text"),
        ('{"type": "message", "id": "a", "text": 5}', "invalid_text"),
        ('{"type": "message", "id": "a", "text": "   "}', "empty_text"),
        ('{"type": "choose", "entry_id": true}', "invalid_entry_id"),
        ('{"type": "choose", "entry_id": 1, "id": ""}', "invalid_id"),
        # Issue 10's hostile input: an error frame, never a closed socket or internal_error.
        ("[" * 5000, "invalid_json"),  # was a RecursionError that closed the socket with 1011
        ("[" * (protocol.frame_max_chars() - 1), "invalid_json"),
        ('{"type": "choose", "entry_id": ' + "9" * 20000 + "}", "frame_too_large"),
        ('{"type": "choose", "entry_id": ' + "9" * 4400 + "}", "invalid_json"),  # over Python's digit limit
        ('{"type": "choose", "entry_id": 1e400}', "invalid_entry_id"),
        ('{"type": "choose", "entry_id": 99999999999999999999}', "invalid_entry_id"),  # beyond a bigint
        ('{"type": "choose", "entry_id": -3}', "invalid_entry_id"),
        ('{"type": "message", "id": "a\\u0000b", "text": "hi"}', "invalid_id"),
        ('{"type": "message", "id": "\\ud800", "text": "hi"}', "invalid_id"),
        ('{"type": "message", "id": "a", "text": "\\u200b\\u202e\\u0000"}', "empty_text"),
    ],
)
def test_bad_client_frames_get_their_error_code(raw, code):
    with pytest.raises(protocol.FrameError) as raised:
        protocol.client_frame_parse(raw)
    assert raised.value.code == code
    frame = protocol.frame_dump(raised.value.frame())
    assert frame["type"] == "error" and frame["code"] == code and "retry_after_ms" not in frame


def test_valid_client_frames_parse_to_their_dataclasses():
    assert protocol.client_frame_parse('{"type": "ping"}') == protocol.PingFrame()
    assert protocol.client_frame_parse('{"type": "message", "id": "a", "text": "  hi "}') == protocol.MessageFrame(
        id="a", text="hi"
    )
    assert protocol.client_frame_parse('{"type": "choose", "entry_id": 3}') == protocol.ChooseFrame(entry_id=3)


def test_optional_keys_are_left_out_when_empty():
    answer = protocol.AnswerFrame(
        reply_to="a", message_id=1, source="faq", text="t", entry_id=2, score=0.9, citations=[], duplicate=False
    )
    assert "handoff" not in protocol.frame_dump(answer)
    error = protocol.FrameError("not_ready", "wait", "a", retry_after_ms=2000).frame()
    assert protocol.frame_dump(error) == {
        "type": "error",
        "code": "not_ready",
        "detail": "wait",
        "reply_to": "a",
        "retry_after_ms": 2000,
    }
    assert json.dumps(protocol.frame_dump(protocol.SessionFrame(conversation="c", resumed=False, resume_token="t")))


# --- bad input (issue 10): an error frame or a normalised frame, never anything else ----------


def test_control_bidi_zero_width_and_lone_surrogates_are_dropped_from_text():
    raw = json.dumps({"type": "message", "id": "a", "text": "wh\u0000ere\u200b is \u202emy\ud800 parcel\r\n?"})
    frame = protocol.client_frame_parse(raw)
    assert frame.text == "where is my parcel\n?"
    frame.text.encode("utf-8")  # storable: no lone surrogate left


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
frame_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["message", "choose", "ping", "pong", ""]) | st.text(max_size=5)},
    optional={"id": json_values, "text": json_values | st.text(), "entry_id": json_values},
)


@hypothesis_settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(frame_like.map(json.dumps), json_values.map(json.dumps), st.text(max_size=200)))
def test_any_frame_parses_to_a_valid_frame_or_a_known_error(raw):
    try:
        frame = protocol.client_frame_parse(raw)
    except protocol.FrameError as error:
        assert error.code in protocol.ERROR_CODES
        return
    if isinstance(frame, protocol.MessageFrame):
        assert frame.text and frame.text == frame.text.strip()
        assert not has_unwanted_characters(frame.text.replace("\n", ""))
        frame.text.encode("utf-8")
        assert len(frame.text) <= protocol.message_max_chars()
    if isinstance(frame, (protocol.MessageFrame, protocol.ChooseFrame)) and frame.id is not None:
        assert 0 < len(frame.id) <= protocol.CLIENT_ID_MAX_CHARS and not has_unwanted_characters(frame.id)
    if isinstance(frame, protocol.ChooseFrame):
        assert 0 < frame.entry_id <= protocol.ENTRY_ID_MAX
