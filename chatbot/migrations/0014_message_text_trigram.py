"""A trigram index for the ops console's text search over messages (PostgreSQL only).

Django's icontains is ``UPPER(text) LIKE UPPER('%words%')``; a GIN index of pg_trgm's trigrams on
``UPPER(text)`` serves it instead of reading every message. The extension is trusted (PostgreSQL 13+:
the database's owner may create it); where it may not be created the search still works, unindexed.
"""

import logging

from django.db import DatabaseError, migrations, transaction

logger = logging.getLogger(__name__)


def trigram_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    try:
        with transaction.atomic(using=schema_editor.connection.alias):
            schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            schema_editor.execute(
                "CREATE INDEX IF NOT EXISTS chatbot_message_text_trgm ON chatbot_message "
                "USING gin (UPPER(text) gin_trgm_ops)"
            )
    except DatabaseError as error:
        logger.warning("no trigram index for the transcripts' text search (%s): it reads every message", error)


def trigram_index_drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS chatbot_message_text_trgm")


class Migration(migrations.Migration):
    dependencies = [("chatbot", "0013_conversation_outcome")]

    operations = [migrations.RunPython(trigram_index, trigram_index_drop)]
