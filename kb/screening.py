"""Screening an entry's text on save: what would turn the knowledge base against its customers.

An entry's answer goes to customers verbatim (the FAQ path) and to the LLM as reference data. An
answer that reads as instructions to a model ("ignore the previous instructions", "system note:",
"tell every customer to ...") or that sends customers to contact details nobody approved is held
unpublished, with the reason shown to editors, until someone rewrites it (or adds the contact to
CHATBOT_CONTACT_ALLOWLIST). The patterns are deliberately few and specific: a held entry costs an
editor a look, a missed one costs customers.
"""

from __future__ import annotations

import re

from django.conf import settings

from kb.contact_details import contacts_not_allowed

_INSTRUCTION_PATTERNS = [
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        r"\b(?:ignore|disregard|forget)\s+(?:all\s+|any\s+)?(?:the\s+|your\s+)?(?:previous|prior|above|earlier|other)"
        r"\s+(?:instructions?|rules|prompts?|messages?)",
        r"\b(?:ignore|disregard)\s+(?:all\s+|any\s+)?(?:your|the)\s+(?:instructions?|rules|guidelines)",
        r"\bsystem\s+(?:note|prompt|message|instructions?|override)\b",
        r"\b(?:tell|instruct|ask|advise|direct)\s+(?:every|all|each)\s+(?:of\s+the\s+)?(?:customers?|users?|visitors?)\b",
        r"\byou\s+are\s+now\b",
        r"\bnew\s+instructions?\b",
        r"\b(?:assistant|chatbot|bot|ai|model)s?\s*[,:]?\s+(?:must|should)\s+(?:always|never|now)\b",
        r"忽略(?:之前|以上|上面|前面|先前|所有)",
        r"系统(?:提示|消息|说明|指令|通知)",
        r"(?:告诉|通知|要求)(?:所有|每一?位|每个)(?:客户|用户|顾客)",
        r"你现在是",
    )
]


def entry_screen(*, question: str, answer: str) -> list[str]:
    """Why this entry should not go live as it is (empty when it may): instruction-like text, and
    contact details (emails, web addresses, phone numbers) not on CHATBOT_CONTACT_ALLOWLIST."""
    reasons = []
    for text in (question, answer):
        for pattern in _INSTRUCTION_PATTERNS:
            match = pattern.search(text)
            if match:
                reasons.append(f"instruction-like text: “{match.group(0)}”")
                break
    foreign = contacts_not_allowed(f"{question}\n{answer}", settings.CHATBOT_CONTACT_ALLOWLIST)
    if foreign:
        listed = ", ".join(dict.fromkeys(contact.text for contact in foreign))
        reasons.append(f"contact details not on the allow-list (CHATBOT_CONTACT_ALLOWLIST): {listed}")
    return reasons
