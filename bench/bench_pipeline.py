"""Embedding pipeline throughput (issue 3): BANKING77's training phrasings imported through the
real pipeline (kb_import -> Celery worker on Redis -> batches -> published index), against raw
batch `encode` and one-at-a-time `encode` of the same texts, measured side by side in one run.

Run: .venv/bin/python bench/bench_pipeline.py   (or `make bench`)
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import DATA, Timer, isolated_environment, save, table  # noqa: E402

TRAIN = DATA / "banking77" / "train.csv"
ONE_AT_A_TIME_SAMPLE = 500


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    env = isolated_environment("pipeline", workdir)
    os.environ.update(env)
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db.models import F

    from config import embedded_redis
    from config.runstack import worker_command, worker_queues
    from kb.embedders import get_embedder, math_threads_set
    from kb.models import IndexVersion, KbRevision, Variant
    from kb.services import kb_refresh_enqueue
    from kb.tasks import kb_refresh

    call_command("migrate", verbosity=0)
    redis_pid = embedded_redis.start(settings.REDIS_SOCKET) if settings.REDIS_EMBEDDED else None
    texts = [row["text"] for row in csv.DictReader(TRAIN.open())]
    embedder = get_embedder()
    math_threads_set(os.cpu_count() or 1)  # raw batch encoding gets every core, as the worker's processes share them
    embedder.encode(texts[:64])  # warm up kernels

    with Timer() as raw:
        embedder.encode(texts)
    with Timer() as single:
        for text in texts[:ONE_AT_A_TIME_SAMPLE]:
            embedder.encode([text])

    def start_worker(log_path: Path, **extra_env: str) -> subprocess.Popen:
        worker = subprocess.Popen(
            worker_command(worker_queues()),
            cwd=settings.BASE_DIR,
            env={**os.environ, **extra_env},
            stdout=log_path.open("w"),
            stderr=subprocess.STDOUT,
        )
        kb_refresh.delay()  # finishes once a pool process has loaded the model
        while "succeeded" not in log_path.read_text():
            if worker.poll() is not None:
                raise SystemExit(log_path.read_text()[-3000:])
            time.sleep(0.2)
        return worker

    def wait_until_searchable(newer_than: int) -> IndexVersion:
        while True:
            latest = IndexVersion.objects.order_by("-id").first()
            current = KbRevision.objects.values_list("value", flat=True).first()
            if latest and latest.pk > newer_than and latest.kb_revision == current:
                if not Variant.objects.filter(is_dirty=True).exists():
                    return latest
            time.sleep(0.05)

    worker = start_worker(workdir / "worker.log")
    try:
        before = IndexVersion.objects.order_by("-id").values_list("id", flat=True).first() or 0
        with Timer() as pipeline:
            with Timer() as importing:
                call_command("kb_import", str(TRAIN), "--publish", verbosity=0)
            total = Variant.objects.count()
            latest = wait_until_searchable(before)
        assert latest.vector_count == total
        worker.terminate()
        worker.wait(timeout=60)

        # The same pipeline with one phrasing per job, on a sample: what batching buys end to end.
        worker = start_worker(workdir / "worker-single.log", KB_EMBED_BATCH_SIZE="1")
        sample = list(Variant.objects.order_by("?").values_list("id", flat=True)[:ONE_AT_A_TIME_SAMPLE])
        with Timer() as unbatched:
            Variant.objects.filter(id__in=sample).update(is_dirty=True, embedded_hash="")
            KbRevision.objects.filter(id=1).update(value=F("value") + 1)
            kb_refresh_enqueue()
            wait_until_searchable(latest.pk)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        if redis_pid:
            embedded_redis.stop(redis_pid)

    n = len(texts)
    raw_rate, single_rate = n / raw.seconds, ONE_AT_A_TIME_SAMPLE / single.seconds
    pipeline_rate = total / pipeline.seconds
    unbatched_rate = ONE_AT_A_TIME_SAMPLE / unbatched.seconds
    result = {
        "phrasings_in_file": n,
        "phrasings_stored": total,
        "database": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1],
        "broker": "redis" if not settings.REDIS_EMBEDDED else "embedded redis",
        "batch_size": settings.KB_EMBED_BATCH_SIZE,
        "worker_processes": settings.CELERY_WORKER_CONCURRENCY,
        "embedder": embedder.name,
        "raw_batch": {"seconds": round(raw.seconds, 2), "per_second": round(raw_rate, 1)},
        "one_at_a_time": {
            "sample": ONE_AT_A_TIME_SAMPLE,
            "seconds": round(single.seconds, 2),
            "per_second": round(single_rate, 1),
        },
        "pipeline": {
            "seconds_until_searchable": round(pipeline.seconds, 2),
            "import_seconds": round(importing.seconds, 2),
            "per_second": round(pipeline_rate, 1),
            "index_version": latest.pk,
            "index_kind": latest.kind,
        },
        "pipeline_one_per_job": {
            "sample": ONE_AT_A_TIME_SAMPLE,
            "seconds": round(unbatched.seconds, 2),
            "per_second": round(unbatched_rate, 1),
        },
        "ratios": {
            "pipeline_vs_raw_batch": round(pipeline_rate / raw_rate, 3),
            "pipeline_vs_one_at_a_time": round(pipeline_rate / single_rate, 2),
            "pipeline_vs_pipeline_one_per_job": round(pipeline_rate / unbatched_rate, 2),
            "raw_batch_vs_one_at_a_time": round(raw_rate / single_rate, 2),
        },
        "targets": {"pipeline_vs_raw_batch": ">= 0.80", "pipeline_vs_one_at_a_time": ">= 5"},
    }
    rows = [
        ("raw encode, one batched call", n, raw.seconds, raw_rate),
        ("encode one at a time", ONE_AT_A_TIME_SAMPLE, single.seconds, single_rate),
        ("pipeline: import -> searchable", total, pipeline.seconds, pipeline_rate),
        ("pipeline, one phrasing per job", ONE_AT_A_TIME_SAMPLE, unbatched.seconds, unbatched_rate),
    ]
    print(
        table(
            [(name, count, f"{secs:.1f}", f"{rate:.0f}", f"{rate / raw_rate:.2f}") for name, count, secs, rate in rows],
            ("path", "phrasings", "seconds", "per second", "vs raw batch"),
        )
    )
    ratios = result["ratios"]
    print(
        f"pipeline vs raw batch {ratios['pipeline_vs_raw_batch']:.2f} (target >= 0.80); pipeline vs one at a time "
        f"{ratios['pipeline_vs_one_at_a_time']:.1f}x (target >= 5; raw batch itself is "
        f"{ratios['raw_batch_vs_one_at_a_time']:.1f}x); vs pipeline one per job "
        f"{ratios['pipeline_vs_pipeline_one_per_job']:.1f}x"
    )
    print(
        f"import step {importing.seconds:.1f} s; {result['database']}, {result['broker']}, batch "
        f"{settings.KB_EMBED_BATCH_SIZE}, {settings.CELERY_WORKER_CONCURRENCY} worker processes"
    )
    print(f"saved {save('pipeline', result).relative_to(settings.BASE_DIR)}")


if __name__ == "__main__":
    main()
