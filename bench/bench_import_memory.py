"""Imports against a live web process (issue 10): the crafted files of the issue's table, and the
largest files the limits let through, posted to /api/kb/import of a real `make run` web server
(uvicorn, models loaded, demo knowledge base) while customers chat with it. For each file: the
status, the time and size of the response, and the web process's peak RSS growth during the
request (Linux's VmHWM, reset through /proc/<pid>/clear_refs before each request). Then a
background job's throughput and the worker's peak growth, and the customers' latencies during the
imports against a calm run before them.

Run: .venv/bin/python bench/bench_import_memory.py   (PostgreSQL and Redis at 127.0.0.1)
"""

from __future__ import annotations

import asyncio
import random
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_load import free_port, kb_files  # noqa: E402
from bench.common import save, table  # noqa: E402
from bench.load_client import percentile, run_customers  # noqa: E402
from bench.stack import Stack  # noqa: E402


def crafted_files() -> list[tuple[str, str, bytes, bool]]:
    """(label, file name, content, dry run) for every file measured."""
    from tests.kb.crafted_imports import DEEP_JSON, csv_rows, json_rows, xlsx_declaring_rows, xlsx_with_far_cell

    # ~100-byte rows: 10 MB within the row limit.
    long_rows = b"question,answer\n" + b"".join(
        f"Question number {n}?,{'A long answer. ' * 5}{n}\n".encode() for n in range(1, 200_001)
    )
    return [
        ("XLSX holding 3,000,000 rows (dry run)", "3m.xlsx", xlsx_declaring_rows(), True),
        ("XLSX declaring 3,000,000 rows (dry run)", "3m-declared.xlsx", xlsx_declaring_rows(written=10), True),
        ("XLSX, one cell in column XFD", "far.xlsx", xlsx_with_far_cell(), False),
        ("XLSX, XFD cell, no declared size", "far-undeclared.xlsx", xlsx_with_far_cell(declared=False), True),
        ('JSON "[" * 100000', "deep.json", DEEP_JSON, False),
        ("CSV over the size limit", "huge.csv", csv_rows(300_000), False),
        ("CSV of 250,000 rows", "many.csv", b"question,answer\n" + b"q,a\n" * 250_000, False),
        ("CSV at the size limit -> job", "large.csv", long_rows[: long_rows.rfind(b"\n", 0, 10 * 2**20) + 1], True),
        ("XLSX of 150,000 rows -> job", "large.xlsx", xlsx_declaring_rows(150_001), True),
        # The most memory JSON takes per byte (~33x) at the most the web process parses.
        ("JSON at the inline byte limit", "objects.json", b"[" + b'{"":{}},' * (2**20 // 8 - 2) + b'{"":{}}]', True),
        ("JSON of 200 entries (inline dry run)", "inline.json", json_rows(200), True),
    ]


def memory_kb(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS since the last reset) of a process, in KB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)), int(re.search(r"VmHWM:\s+(\d+)", status).group(1))


def peak_reset(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def post(base: str, token: str, name: str, content: bytes, dry_run: bool) -> tuple[requests.Response, float]:
    started = time.perf_counter()
    response = requests.post(
        f"{base}api/kb/import" + ("?dry_run=1" if dry_run else ""),
        files={"file": (name, content)},
        headers={"Authorization": f"Token {token}"},
        timeout=300,
    )
    return response, time.perf_counter() - started


def job_wait(job_id: str, timeout: float = 900) -> dict:
    from kb.models import ImportJob

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = ImportJob.objects.defer("content").get(pk=job_id)
        if job.finished:
            return {"state": job.state, "rows": job.rows_total, "errors": job.error_count}
        time.sleep(0.2)
    raise SystemExit(f"job {job_id} did not finish")


def main() -> None:
    kb_file, questions = kb_files("demo")
    stack = Stack("imports", Path(tempfile.mkdtemp(prefix="bench-imports-")))
    stack.django_setup()
    print("importing the demo knowledge base ...", flush=True)
    stack.kb_load(kb_file)
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from kb.models import ImportJob
    from tests.kb.crafted_imports import csv_rows

    user = get_user_model().objects.create_superuser("bench", "bench@example.com", "pw-bench-123")
    token = Token.objects.create(user=user).key
    files = crafted_files()
    rows, chat = [], {}
    try:
        port = free_port()
        stack.web_start(port, 1)
        base, web_pid = stack.url, stack.serving_pids()[0]
        url, origin = f"ws://127.0.0.1:{port}/ws/chat/", f"http://127.0.0.1:{port}"
        rng = random.Random(3)
        sets = [rng.sample(questions, 30) for _ in range(10)]
        asyncio.run(run_customers(url, origin, sets[:5], 0.1, seed=1))  # warm-up
        post(base, token, "warm.csv", csv_rows(10), True)  # the first import loads its modules
        chat["calm"] = asyncio.run(run_customers(url, origin, sets, 0.3, seed=2))

        during = {}
        customers = threading.Thread(
            target=lambda: during.setdefault("result", asyncio.run(run_customers(url, origin, sets, 0.3, seed=3)))
        )
        customers.start()
        for label, name, content, dry_run in files:
            time.sleep(0.5)
            peak_reset(web_pid)
            before, _ = memory_kb(web_pid)
            response, seconds = post(base, token, name, content, dry_run)
            after, peak = memory_kb(web_pid)
            job = response.json().get("id") if response.status_code == 202 else None
            if job:  # measured the web side; stop the job instead of letting it run for minutes
                ImportJob.objects.filter(pk=job).update(state="failed", detail="stopped by the benchmark")
            detail = response.json().get("detail", response.json().get("state", ""))
            rows.append(
                {
                    "file": label,
                    "upload_kb": round(len(content) / 1024),
                    "status": response.status_code,
                    "seconds": round(seconds, 3),
                    "response_bytes": len(response.content),
                    "rss_peak_growth_mb": round((peak - before) / 1024, 1),
                    "rss_kept_mb": round((after - before) / 1024, 1),
                    "detail": str(detail)[:90],
                }
            )
            print(rows[-1], flush=True)
        customers.join()
        chat["during imports"] = during["result"]

        # A job to the end: a 5,000-row dry run on the worker.
        worker_pids = stack.worker_pids()
        for pid in worker_pids:
            peak_reset(pid)
        worker_before = {pid: memory_kb(pid)[0] for pid in worker_pids}
        response, _ = post(base, token, "job.csv", csv_rows(5_000), True)
        started = time.perf_counter()
        job_result = job_wait(response.json()["id"])
        job_result["seconds"] = round(time.perf_counter() - started, 1)
        job_result["rows_per_second"] = round(job_result["rows"] / job_result["seconds"])
        job_result["worker_rss_peak_growth_mb"] = round(
            max((memory_kb(pid)[1] - worker_before[pid]) / 1024 for pid in worker_pids), 1
        )
        print("job:", job_result, flush=True)
    finally:
        stack.stop()

    print(
        table(
            [
                (r["file"], r["upload_kb"], r["status"], r["seconds"], r["response_bytes"], r["rss_peak_growth_mb"])
                for r in rows
            ],
            ("file", "upload KB", "status", "seconds", "response B", "web RSS peak +MB"),
        )
    )
    chat_summary = {
        run: {
            "answers": result.answers,
            "p50_ms": round(percentile(result.latencies_ms, 0.5), 1),
            "p95_ms": round(percentile(result.latencies_ms, 0.95), 1),
            "max_ms": round(max(result.latencies_ms, default=0), 1),
            "drops": result.drops,
            "errors": result.errors,
        }
        for run, result in chat.items()
    }
    print(
        table(
            [(run, *s.values()) for run, s in chat_summary.items()],
            ("chat", "answers", "p50 ms", "p95 ms", "max ms", "drops", "errors"),
        )
    )
    path = save("imports", {"files": rows, "job": job_result, "chat": chat_summary})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
