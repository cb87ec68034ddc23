"""The chat protocol of ``/ws/chat/``: every frame of both directions, defined once, with its limits.

The consumer parses client frames with :func:`client_frame_parse` and sends only the dataclasses
below (:func:`frame_dump`); answering and history build them here. Clients (the demo page, the
widget, anyone's own) build on the JSON Schema generated from these definitions
(:func:`protocol_schema`), which the app serves at ``/chat/protocol.schema.json`` and
``docs/chat-protocol.schema.json`` keeps in the repository. A change to a frame that an existing
client could misread raises :data:`PROTOCOL_VERSION`, which every ``session`` frame carries.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from pydantic import Field, TypeAdapter

from kb.text import has_unwanted_characters, text_sanitise

PROTOCOL_VERSION = 3  # 2: resuming needs the resume token; flood control. 3: the live hand-off

# Limits. The client id and a site's key are stored in columns of these sizes (a test checks they agree).
CLIENT_ID_MAX_CHARS = 100
SITE_MAX_CHARS = 100
ENTRY_ID_MAX = 2**63 - 1  # a bigint primary key
MESSAGE_ID_MAX = 2**63 - 1
FEEDBACK_REASON_MAX_CHARS = 500
RATING_COMMENT_MAX_CHARS = 1000
CUSTOMER_NAME_MAX_CHARS = 100
CUSTOMER_EMAIL_MAX_CHARS = 254

ERROR_CODES = {
    "invalid_json": "the frame is not valid JSON",
    "invalid_frame": "not a JSON object, or a binary frame",
    "frame_too_large": "the frame is larger than any valid frame can be",
    "unknown_type": "a frame type this server does not know",
    "invalid_id": "a missing, empty or too long client id",
    "missing_text": 'a message without "text"',
    "invalid_text": '"text" is not a string',
    "empty_text": "a message of only whitespace",
    "text_too_long": "a message longer than the limit",
    "invalid_entry_id": 'a "choose" frame without an integer "entry_id"',
    "invalid_choice": "an entry not offered in this conversation, or unpublished since",
    "resume_denied": "the resume token is missing or wrong for that conversation; a new one was started",
    "rate_limited": "more frames or messages than the limits allow; send again after retry_after_ms",
    "busy": "too many messages waiting for answers on this socket; send again after retry_after_ms",
    "too_many_connections": "this address has too many chat sockets open; the socket is closed",
    "flood_closed": "the socket went on sending far over the limits and its connection is dropped; its address "
    "may connect again after retry_after_ms",
    "not_ready": "this web process has no search index yet; send the same message again later",
    "invalid_feedback": 'a "feedback" frame naming no bot reply of this conversation, or with a bad value or reason',
    "invalid_rating": 'a "rating" frame without a score of 1 to 5, with a bad comment, or before any message',
    "invalid_identity": 'an "identify" frame with a bad name or email',
    "invalid_typing": 'a "typing" frame without a boolean "active"',
    "not_waiting": 'a "handoff_cancel" when no person is asked for (an agent may hold the chat already)',
    "internal_error": "answering failed; the message may be sent again",
}


def message_max_chars() -> int:
    """The longest customer message accepted (CHATBOT_MAX_MESSAGE_CHARS)."""
    return settings.CHATBOT_MAX_MESSAGE_CHARS


def frame_max_chars() -> int:
    """A bound on any valid client frame's size, checked before parsing: a frame cannot be much
    larger than its longest text, even with every character escaped."""
    return message_max_chars() * 8 + 1024


class FrameError(Exception):
    """A client frame that cannot be accepted; becomes an error frame, never a closed socket."""

    def __init__(self, code: str, detail: str, reply_to: str | None = None, **extra):
        if code not in ERROR_CODES:  # every code a client may receive is documented
            raise ValueError(f"undocumented error code {code!r}")
        super().__init__(detail)
        self.code, self.detail, self.reply_to, self.extra = code, detail, reply_to, extra

    def frame(self) -> ErrorFrame:
        """This error as the frame the client receives."""
        return ErrorFrame(code=self.code, detail=self.detail, reply_to=self.reply_to, **self.extra)


ClientId = Annotated[str, Field(min_length=1, max_length=CLIENT_ID_MAX_CHARS)]


# Client → server ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageFrame:
    """A customer message. ``id`` is the client's own id for it: a resend with the same id is
    answered with the stored reply, never twice."""

    id: ClientId
    text: Annotated[str, Field(min_length=1)]
    type: Literal["message"] = "message"


@dataclass(frozen=True)
class ChooseFrame:
    """The customer picked a "did you mean" option; it is stored as their turn."""

    entry_id: Annotated[int, Field(gt=0, le=ENTRY_ID_MAX)]
    id: ClientId | None = None
    type: Literal["choose"] = "choose"


@dataclass(frozen=True)
class PingFrame:
    """Keep-alive from the client; answered with a pong."""

    type: Literal["ping"] = "ping"


@dataclass(frozen=True)
class FeedbackFrame:
    """Thumbs up or down on one bot reply (sent again, it replaces the earlier one)."""

    message_id: Annotated[int, Field(gt=0, le=MESSAGE_ID_MAX)]
    value: Literal["up", "down"]
    reason: Annotated[str, Field(max_length=FEEDBACK_REASON_MAX_CHARS)] = ""
    type: Literal["feedback"] = "feedback"


@dataclass(frozen=True)
class RatingFrame:
    """The customer rates the whole conversation (when it ends, or is handed to a person)."""

    score: Annotated[int, Field(ge=1, le=5)]
    comment: Annotated[str, Field(max_length=RATING_COMMENT_MAX_CHARS)] = ""
    type: Literal["rating"] = "rating"


@dataclass(frozen=True)
class IdentifyFrame:
    """Who the customer is, as the host page knows it (``SupportChat.identify``); shown to agents,
    never to the LLM."""

    name: Annotated[str, Field(max_length=CUSTOMER_NAME_MAX_CHARS)] | None = None  # absent: unchanged
    email: Annotated[str, Field(max_length=CUSTOMER_EMAIL_MAX_CHARS)] | None = None  # absent: unchanged
    type: Literal["identify"] = "identify"


@dataclass(frozen=True)
class TypingClientFrame:
    """The customer is typing (``active``) or stopped; passed on to the agent holding the chat."""

    active: bool
    type: Literal["typing"] = "typing"


@dataclass(frozen=True)
class HandoffCancelFrame:
    """The customer no longer waits for a person: the bot answers again."""

    type: Literal["handoff_cancel"] = "handoff_cancel"


ClientFrame = (
    MessageFrame
    | ChooseFrame
    | PingFrame
    | FeedbackFrame
    | RatingFrame
    | IdentifyFrame
    | TypingClientFrame
    | HandoffCancelFrame
)


# Server → client ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionFrame:
    """Sent first on every connection: the conversation (new, or resumed with
    ``?conversation=<id>&resume=<resume_token>``) and the token that resumes it later."""

    conversation: str
    resumed: bool
    resume_token: str
    protocol: int = PROTOCOL_VERSION
    type: Literal["session"] = "session"


@dataclass(frozen=True)
class ErrorFrame:
    """A frame that was not accepted (nothing was stored); the connection stays open."""

    code: str
    detail: str
    reply_to: str | None = None  # the client id, when known
    # not_ready, rate_limited, busy, too_many_connections: send (or connect) again after this long
    retry_after_ms: int | None = None
    limit: Literal["frames", "messages"] | None = None  # rate_limited: which limit
    type: Literal["error"] = "error"


@dataclass(frozen=True)
class PongFrame:
    """The answer to a ping."""

    type: Literal["pong"] = "pong"


@dataclass(frozen=True)
class DeltaFrame:
    """A piece of an LLM reply as it streams; the final ``answer`` frame's text is authoritative."""

    reply_to: str
    text: str
    type: Literal["delta"] = "delta"


@dataclass(frozen=True)
class AnswerFrame:
    """The bot's reply: an FAQ answer, an LLM answer, or a hand-off (``handoff`` says which kind:
    "offered" when the bot cannot answer, "requested" when the customer asked for a person)."""

    reply_to: str
    message_id: int
    source: Literal["faq", "llm", "handoff"]
    text: str
    entry_id: int | None
    score: float
    citations: list[int]
    duplicate: bool  # a resent client id: this is the reply stored the first time
    handoff: Literal["offered", "requested"] | None = None
    # "closed": a person was asked for outside the site's opening hours (the widget asks for an email)
    hours: Literal["closed"] | None = None
    type: Literal["answer"] = "answer"


@dataclass(frozen=True)
class Option:
    """One "did you mean" option."""

    entry_id: int
    question: str


@dataclass(frozen=True)
class SuggestionsFrame:
    """ "Did you mean": the options the customer may pick with a ``choose`` frame."""

    reply_to: str
    message_id: int
    text: str
    options: list[Option]
    duplicate: bool
    type: Literal["suggestions"] = "suggestions"


@dataclass(frozen=True)
class HistoryItem:
    """One stored message as history shows it."""

    message_id: int
    role: Literal["customer", "bot", "agent"]
    text: str
    client_id: str | None
    reply_to: str | None  # for a bot turn: the client id of the customer message it answers
    source: Literal["faq", "llm", "clarify", "handoff", "fallback"] | None  # fallback: first-release transcripts
    options: list[Option]
    citations: list[int]
    handoff: Literal["offered", "requested"] | None
    created_at: str
    agent: str | None = None  # an agent's message: the name customers see


@dataclass(frozen=True)
class HistoryFrame:
    """On resume, the last messages of the conversation; later, an exchange made on another socket
    of the same conversation (another tab or device)."""

    messages: list[HistoryItem] = field(default_factory=list)
    type: Literal["history"] = "history"


@dataclass(frozen=True)
class FeedbackSavedFrame:
    """A feedback frame was stored."""

    message_id: int
    value: Literal["up", "down"]
    type: Literal["feedback_saved"] = "feedback_saved"


@dataclass(frozen=True)
class RatingSavedFrame:
    """A rating frame was stored."""

    score: int
    type: Literal["rating_saved"] = "rating_saved"


@dataclass(frozen=True)
class IdentifiedFrame:
    """An identify frame was stored."""

    type: Literal["identified"] = "identified"


@dataclass(frozen=True)
class ReceivedFrame:
    """A customer message was stored for a person to answer (while one is asked for or holds the chat):
    no bot reply follows."""

    reply_to: str
    message_id: int
    duplicate: bool
    type: Literal["received"] = "received"


@dataclass(frozen=True)
class HandoffCancelledFrame:
    """The request for a person was withdrawn (on this or another tab): the bot answers again."""

    type: Literal["handoff_cancelled"] = "handoff_cancelled"


@dataclass(frozen=True)
class AgentJoinedFrame:
    """A person took the conversation: the bot is silent until they hand it back."""

    agent: str  # the name customers see
    type: Literal["agent_joined"] = "agent_joined"


@dataclass(frozen=True)
class AgentLeftFrame:
    """The person left: handed the chat back to the bot, closed it, or their connection stayed lost
    (``agent_away``: the chat waits for the next agent)."""

    agent: str
    reason: Literal["handed_back", "closed", "agent_away"]
    type: Literal["agent_left"] = "agent_left"


@dataclass(frozen=True)
class AgentMessageFrame:
    """A message from the agent holding the conversation."""

    message_id: int
    text: str
    agent: str
    created_at: str
    from_: Annotated[Literal["agent"], Field(alias="from")] = "agent"
    type: Literal["message"] = "message"


@dataclass(frozen=True)
class TypingFrame:
    """The other side is typing (``active``) or stopped."""

    active: bool
    from_: Annotated[Literal["agent", "customer"], Field(alias="from")] = "agent"
    type: Literal["typing"] = "typing"


ServerFrame = (
    SessionFrame
    | ErrorFrame
    | PongFrame
    | DeltaFrame
    | AnswerFrame
    | SuggestionsFrame
    | HistoryFrame
    | FeedbackSavedFrame
    | RatingSavedFrame
    | IdentifiedFrame
    | ReceivedFrame
    | HandoffCancelledFrame
    | AgentJoinedFrame
    | AgentLeftFrame
    | AgentMessageFrame
    | TypingFrame
)

# Keys left out of a frame when None (optional in the schema): clients test for their presence.
_OMITTED_WHEN_NONE = {
    "reply_to": (ErrorFrame,),
    "retry_after_ms": (ErrorFrame,),
    "limit": (ErrorFrame,),
    "handoff": (AnswerFrame,),
    "hours": (AnswerFrame,),
}


def frame_dump(frame: ServerFrame) -> dict[str, Any]:
    """A server frame as the JSON object sent on the socket."""
    data = dataclasses.asdict(frame)
    if "from_" in data:  # "from" is a Python keyword
        data["from"] = data.pop("from_")
    for key, kinds in _OMITTED_WHEN_NONE.items():
        if isinstance(frame, kinds) and data.get(key) is None:
            data.pop(key, None)
    return data


def client_frame_parse(text_data: str | None) -> ClientFrame:
    """Parse and validate one client frame; raises :class:`FrameError` with the code to send back."""
    if text_data is None:
        raise FrameError("invalid_frame", "Send JSON text frames, not binary.")
    if len(text_data) > frame_max_chars():
        raise FrameError("frame_too_large", "The frame is too large.")
    try:
        content = json.loads(text_data)
    except RecursionError as exc:  # "[[[[..." deeper than the parser's stack
        raise FrameError("invalid_json", "The frame is nested too deeply.") from exc
    except ValueError as exc:  # also integers longer than Python's 4,300-digit limit
        raise FrameError("invalid_json", "The frame is not valid JSON.") from exc
    if not isinstance(content, dict):
        raise FrameError("invalid_frame", "A frame must be a JSON object.")
    frame_type = content.get("type")
    if frame_type == "ping":
        return PingFrame()
    if frame_type == "choose":
        return _choose_parse(content)
    if frame_type == "message":
        return _message_parse(content)
    if frame_type == "feedback":
        return _feedback_parse(content)
    if frame_type == "rating":
        return _rating_parse(content)
    if frame_type == "identify":
        return _identify_parse(content)
    if frame_type == "handoff_cancel":
        return HandoffCancelFrame()
    if frame_type == "typing":
        if not isinstance(content.get("active"), bool):
            raise FrameError("invalid_typing", 'A "typing" frame needs "active": true or false.')
        return TypingClientFrame(active=content["active"])
    raise FrameError("unknown_type", f"Unknown frame type {str(frame_type)[:40]!r}.")


def _message_parse(content: dict) -> MessageFrame:
    client_id = content.get("id")
    if not _client_id_valid(client_id):
        raise FrameError(
            "invalid_id",
            f'A message needs an "id": a non-empty string of at most {CLIENT_ID_MAX_CHARS} characters, '
            "without control characters.",
        )
    text = content.get("text")
    if text is None:
        raise FrameError("missing_text", 'A message needs a "text".', client_id)
    if not isinstance(text, str):
        raise FrameError("invalid_text", '"text" must be a string.', client_id)
    # Control, bidi-override and zero-width characters and lone surrogates are dropped: they are
    # never meant, PostgreSQL refuses NUL, and no database stores a lone surrogate.
    text = text_sanitise(text).strip()
    if not text:
        raise FrameError("empty_text", "The message is empty.", client_id)
    limit = message_max_chars()
    if len(text) > limit:
        raise FrameError("text_too_long", f"The message is longer than {limit} characters.", client_id)
    return MessageFrame(id=client_id, text=text)


def _choose_parse(content: dict) -> ChooseFrame:
    client_id = content.get("id")
    if client_id is not None and not _client_id_valid(client_id):
        raise FrameError(
            "invalid_id",
            f'A "choose" frame\'s "id", when given, must be a non-empty string of at most {CLIENT_ID_MAX_CHARS} '
            "characters, without control characters.",
        )
    entry_id = content.get("entry_id")
    if not isinstance(entry_id, int) or isinstance(entry_id, bool) or not 0 < entry_id <= ENTRY_ID_MAX:
        raise FrameError("invalid_entry_id", 'A "choose" frame needs a positive integer "entry_id".', client_id)
    return ChooseFrame(entry_id=entry_id, id=client_id)


def _feedback_parse(content: dict) -> FeedbackFrame:
    message_id = content.get("message_id")
    if not _positive_int(message_id, MESSAGE_ID_MAX):
        raise FrameError("invalid_feedback", 'A "feedback" frame needs the "message_id" of a bot reply.')
    value = content.get("value")
    if value not in ("up", "down"):
        raise FrameError("invalid_feedback", '"value" must be "up" or "down".')
    reason = _optional_text(content.get("reason"), FEEDBACK_REASON_MAX_CHARS, "invalid_feedback", '"reason"')
    return FeedbackFrame(message_id=message_id, value=value, reason=reason)


def _rating_parse(content: dict) -> RatingFrame:
    score = content.get("score")
    if not _positive_int(score, 5):
        raise FrameError("invalid_rating", '"score" must be a whole number from 1 to 5.')
    comment = _optional_text(content.get("comment"), RATING_COMMENT_MAX_CHARS, "invalid_rating", '"comment"')
    return RatingFrame(score=score, comment=comment)


def _identify_parse(content: dict) -> IdentifyFrame:
    name = email = None
    if "name" in content:
        name = " ".join(_optional_text(content["name"], CUSTOMER_NAME_MAX_CHARS, "invalid_identity", '"name"').split())
    if "email" in content:
        email = _optional_text(content["email"], CUSTOMER_EMAIL_MAX_CHARS, "invalid_identity", '"email"').lower()
        if email:
            try:
                validate_email(email)
            except ValidationError:
                raise FrameError("invalid_identity", '"email" is not an email address.') from None
    return IdentifyFrame(name=name, email=email)


def _positive_int(value, maximum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= maximum


def _optional_text(value, limit: int, code: str, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FrameError(code, f"{what} must be a string.")
    text = text_sanitise(value).strip()
    if len(text) > limit:
        raise FrameError(code, f"{what} is longer than {limit} characters.")
    return text


def reply_frame(message, *, client_id: str, duplicate: bool) -> AnswerFrame | SuggestionsFrame:
    """The frame for a stored bot reply (``message``, a chatbot.models.Message), also when it is
    sent again for a resent client id."""
    decision = message.decision or {}
    if message.source == "clarify":
        return SuggestionsFrame(
            reply_to=client_id,
            message_id=message.id,
            text=message.text,
            options=[Option(**option) for option in decision.get("options", [])],
            duplicate=duplicate,
        )
    return AnswerFrame(
        reply_to=client_id,
        message_id=message.id,
        source=message.source,
        text=message.text,
        entry_id=message.entry_id,
        score=round(message.score or 0.0, 4),
        citations=list(message.citations or []),
        duplicate=duplicate,
        handoff=decision.get("handoff", "offered") if message.source == "handoff" else None,
        hours=decision.get("handoff_hours") if message.source == "handoff" else None,
    )


def history_item(message) -> HistoryItem:
    """One stored message (a chatbot.models.Message whose ``reply_to`` is loaded or loadable) as
    history frames carry it."""
    decision = message.decision or {}
    return HistoryItem(
        message_id=message.id,
        role=message.role,
        text=message.text,
        client_id=message.client_id,
        reply_to=message.reply_to.client_id if message.reply_to_id else None,
        source=message.source or None,
        options=[Option(**option) for option in decision.get("options", [])] if message.source == "clarify" else [],
        citations=list(message.citations or []),
        handoff=decision.get("handoff") if message.source == "handoff" else None,
        created_at=message.created_at.isoformat(),
        agent=agent_name(message.agent) if message.role == "agent" and message.agent_id else None,
    )


def agent_name(agent) -> str:
    """How customers see an agent (a user): the first name, else the user name."""
    return (agent.first_name or agent.get_username()) if agent is not None else ""


def _client_id_valid(client_id) -> bool:
    # Refused, not cleaned: a resend must carry exactly the id it was first sent with.
    return (
        isinstance(client_id, str)
        and bool(client_id.strip())
        and len(client_id) <= CLIENT_ID_MAX_CHARS
        and not has_unwanted_characters(client_id)
    )


@dataclass(frozen=True)
class ConnectQuery:
    """What a client may put in the socket's query string."""

    conversation: str | None  # the conversation to resume, as a canonical UUID; None when not given
    resume_token: str
    site: str  # a site's public key (chatbot.models.Site.key); "default" when not given
    resume_asked: bool  # ?conversation= was given (maybe malformed: then ``conversation`` is None)


def connect_query_parse(query_string: bytes) -> ConnectQuery:
    """``?conversation=<id>&resume=<token>&site=<key>``, each optional."""
    query = parse_qs(query_string.decode("utf-8", "replace"))
    requested = (query.get("conversation") or [""])[0].strip()
    try:
        conversation = str(uuid.UUID(requested)) if requested else None
    except ValueError:
        conversation = None
    return ConnectQuery(
        conversation=conversation,
        resume_token=(query.get("resume") or [""])[0].strip()[:200],
        site=site_parse((query.get("site") or [""])[0]),
        resume_asked=bool(requested),
    )


def site_parse(value: str | None) -> str:
    """The ``?site=`` of a connection (a site's public key), cleaned and cut to what a key can be;
    the default site's key when absent. The handshake refuses keys of no active site."""
    return text_sanitise(value or "").strip()[:SITE_MAX_CHARS] or "default"


def protocol_schema() -> dict:
    """The JSON Schema of both directions, with the limits in force."""
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Chat websocket protocol (/ws/chat/)",
        "description": __doc__.strip().splitlines()[0],
        "version": PROTOCOL_VERSION,
        "limits": {
            "client_id_max_chars": CLIENT_ID_MAX_CHARS,
            "message_max_chars": message_max_chars(),
            "frame_max_chars": frame_max_chars(),
        },
        "error_codes": ERROR_CODES,
    }
    for direction, union in (("client_to_server", ClientFrame), ("server_to_client", ServerFrame)):
        adapter = TypeAdapter(Annotated[union, Field(discriminator="type")])
        schema[direction] = adapter.json_schema(ref_template="#/$defs/{model}")
    # One shared $defs table instead of one per direction.
    schema["$defs"] = {}
    for direction in ("client_to_server", "server_to_client"):
        schema["$defs"].update(schema[direction].pop("$defs", {}))
    text = schema["$defs"]["MessageFrame"]["properties"]["text"]
    text["maxLength"] = message_max_chars()
    for definition in schema["$defs"].values():
        # Every frame carries its type, though the dataclasses give it a default.
        if "type" in definition.get("properties", {}):
            definition["required"] = sorted({*definition.get("required", []), "type"})
    return schema


def protocol_schema_json() -> str:
    """:func:`protocol_schema` as the text of docs/chat-protocol.schema.json."""
    return json.dumps(protocol_schema(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"
