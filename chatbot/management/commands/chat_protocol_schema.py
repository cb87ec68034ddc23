"""Print the chat protocol's JSON Schema (the text of docs/chat-protocol.schema.json)."""

from django.core.management.base import BaseCommand

from chatbot.protocol import protocol_schema_json


class Command(BaseCommand):
    help = "Print the chat websocket protocol's JSON Schema (write it to docs/chat-protocol.schema.json)."

    def handle(self, *args, **options):
        self.stdout.write(protocol_schema_json(), ending="")
