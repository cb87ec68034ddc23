"""Who may use the ops console: one permission per capability, held by groups (the migration that
creates the groups: ops/migrations/0001_roles.py)."""

from __future__ import annotations

OPS_REVIEWERS = "Ops reviewers"
AGENTS = "Agents"
KB_EDITORS = "KB editors"

# Reading transcripts (the list, a conversation, the exports).
VIEW_TRANSCRIPTS = "chatbot.view_conversation"


def can_view_transcripts(user) -> bool:
    """Whether ``user`` may read transcripts: an active staff member holding the permission."""
    return bool(user.is_authenticated and user.is_active and user.is_staff and user.has_perm(VIEW_TRANSCRIPTS))


# Chatting with customers in the agent inbox.
HANDLE_CONVERSATIONS = "chatbot.handle_conversation"


def can_handle_conversations(user) -> bool:
    """Whether ``user`` may take chats in the inbox: an active staff member holding the permission."""
    return bool(
        user is not None
        and user.is_authenticated
        and user.is_active
        and user.is_staff
        and user.has_perm(HANDLE_CONVERSATIONS)
    )
