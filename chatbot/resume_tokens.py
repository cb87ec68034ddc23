"""Resume tokens: the secret that lets a client reopen its conversation.

A conversation id shows up in places a secret should not (transcript links, logs, screenshots), so
the id alone reveals and changes nothing. The token is an HMAC of the id under SECRET_KEY (salted
for this one use): nothing is stored, so a conversation that has no message yet can be resumed too,
and rotating SECRET_KEY (keeping the old one in SECRET_KEY_FALLBACKS for a while) ends every
outstanding token.
"""

from __future__ import annotations

from django.core import signing

_SALT = "chatbot.resume-token"


def resume_token(conversation_id: str) -> str:
    """The token the session frame hands the client for this conversation."""
    return signing.Signer(salt=_SALT).signature(str(conversation_id))


def resume_token_valid(conversation_id: str, token: str) -> bool:
    """Whether ``token`` resumes ``conversation_id`` (under SECRET_KEY or one of its fallbacks)."""
    if not conversation_id or not token:
        return False
    try:
        signing.Signer(salt=_SALT).unsign(f"{conversation_id}{signing.Signer().sep}{token}")
    except signing.BadSignature:
        return False
    return True
