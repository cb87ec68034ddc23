"""Knowledge-base builders for tests: real services, real embedder, real index files."""

from __future__ import annotations

from kb import services
from kb.models import Entry

SHOP_ENTRIES = [
    {
        "question": "How do I track my order?",
        "answer": "Open Account > Orders and click Track package.",
        "category": "orders",
        "variants": ["Where is my package?", "track my parcel", "has my order shipped yet"],
    },
    {
        "question": "What is your return policy?",
        "answer": "You can return items within 30 days of delivery.",
        "category": "returns",
        "variants": ["Can I send something back?", "how many days do I have to return an item"],
    },
    {
        "question": "Which payment methods do you accept?",
        "answer": "Visa, Mastercard, PayPal and gift cards.",
        "category": "payment",
        "variants": ["can I pay with paypal", "do you take credit cards"],
    },
    {
        "question": "How do I reset my password?",
        "answer": "Click Forgot password on the sign-in page.",
        "category": "account",
        "variants": ["I forgot my password", "can't log in to my account"],
    },
]


def entries_create(specs=None) -> list[Entry]:
    """Create entries through the services (so their phrasings start dirty)."""
    return [services.entry_create(**spec) for spec in (specs or SHOP_ENTRIES)]


def kb_embed_and_publish():
    """Embed every dirty phrasing and publish an index version, in-process."""
    while services.variants_embed_batch(limit=64).remaining:
        pass
    return services.index_publish()


def upload(name: str, content: str | bytes):
    """An uploaded file as a form posts it."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, content.encode() if isinstance(content, str) else content)
