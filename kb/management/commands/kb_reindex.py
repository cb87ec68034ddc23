"""manage.py kb_reindex: embed every phrasing again and publish a fresh index version."""

from django.core.management.base import BaseCommand
from tqdm import tqdm

from kb import services
from kb.models import Variant


class Command(BaseCommand):
    help = "Re-embed all phrasings (e.g. after changing the embedder) and publish a new index; chat keeps answering."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=None, help="phrasings per model call")

    def handle(self, *args, batch_size, **options):
        import os

        from kb.embedders import math_threads_set
        from kb.embedding_models import active_embedder

        active_embedder()  # the active model version, loaded before the progress bar starts
        math_threads_set(os.cpu_count() or 1)  # batches, not single questions: every core helps
        total = Variant.objects.count()
        with tqdm(total=total, desc="embed", unit="phrasing", disable=options["verbosity"] < 1) as bar:
            stored = services.variants_reembed_all(batch_size=batch_size, progress=bar.update)
        version = services.index_publish()
        self.stdout.write(
            self.style.SUCCESS(
                f"re-embedded {stored} of {total} phrasings; published index v{version.pk} "
                f"({version.vector_count} vectors, {version.kind})"
            )
        )
