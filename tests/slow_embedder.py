"""The default embedder, slowed down and announcing each batch, so a test can kill a worker in the
middle of one. Selected in a worker process with KB_EMBEDDER=tests.slow_embedder.SlowEmbedder."""

import os
import time
from pathlib import Path

from kb.embedders import LanguageRoutedEmbedder


class SlowEmbedder(LanguageRoutedEmbedder):
    """Writes a line to $SLOW_EMBEDDER_LOG when a batch starts, then takes $SLOW_EMBEDDER_SECONDS."""

    def encode(self, texts):
        with Path(os.environ["SLOW_EMBEDDER_LOG"]).open("a") as log:
            log.write(f"start {len(texts)}\n")
        time.sleep(float(os.environ.get("SLOW_EMBEDDER_SECONDS", "1")))
        return super().encode(texts)
