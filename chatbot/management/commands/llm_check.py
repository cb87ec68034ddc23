"""manage.py llm_check: what the configured LLM server does with our prompt, before customers see it."""

import asyncio

from django.core.management.base import BaseCommand, CommandError

from chatbot.llm import GroundingEntry, get_llm

SAMPLE_ENTRIES = [
    GroundingEntry(1, "How long does shipping take?", "Standard shipping takes 3-5 business days."),
    GroundingEntry(2, "What is your return policy?", "Items can be returned within 30 days of delivery."),
]
SAMPLES = ["How long does shipping take?", "Do you sell garden furniture?"]


class Command(BaseCommand):
    help = (
        "Probe the LLM server (LLM_BASE_URL): whether its chat template keeps system messages (the mode "
        "LLM_SYSTEM_ROLE=auto picks), then two sample questions through the real answer path, showing for each "
        "whether it would reach the customer and why."
    )

    def handle(self, *args, **options):
        llm = get_llm()
        if llm is None:
            raise CommandError("no LLM is configured: set LLM_BASE_URL (and LLM_MODEL)")
        asyncio.run(self._check(llm))

    async def _check(self, llm) -> None:
        self.stdout.write(f"server: {llm.config.base_url}  model: {llm.config.model}")
        try:
            role, why = await llm.system_role_resolve()
        except Exception as exc:  # noqa: BLE001 - any failure is the answer to "does it work"
            raise CommandError(f"the server cannot be reached or refused the probe: {exc}") from None
        self.stdout.write(f"instructions: {role} ({why})")
        for question in SAMPLES:
            reply = await llm.answer(question=question, entries=SAMPLE_ENTRIES, history=[])
            shown = "shown to the customer" if reply.status == "answered" else "replaced by the hand-off offer"
            self.stdout.write(f"\n{question}\n  {reply.status}: {shown}; citations {reply.citations or 'none'}")
            if reply.error:
                self.stdout.write(f"  why: {reply.error}")
            self.stdout.write("  model wrote: " + (reply.raw.strip().replace("\n", " | ")[:300] or "(nothing)"))
