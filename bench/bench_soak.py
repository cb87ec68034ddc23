"""Soak (issue 8): 100 customers for 30 minutes on the full stack (uvicorn, Celery worker, Redis,
PostgreSQL). Customers come and go: each connects, asks 5 questions with an exponential think time,
leaves, and another takes its place. Every 30 s the resident memory of every process of ours (web
server and its workers, Celery worker and its pool) is sampled; at the end the answers are checked
in the database (every question and reply exactly once) and memory is judged flat or not.

Run: .venv/bin/python bench/bench_soak.py [--minutes 30] [--customers 100] [--think 2] [--web 1]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_load import QUESTIONS_PER_CUSTOMER, exactly_once, free_port, kb_files  # noqa: E402
from bench.common import BASE_DIR, save, table  # noqa: E402
from bench.load_client import LoadResult, customer, percentile  # noqa: E402
from bench.stack import Stack  # noqa: E402

SAMPLE_SECONDS = 30


def rss_sample(stack: Stack) -> dict[str, float]:
    """Resident memory (MB) of every process of the stack, by role and pid."""
    import psutil

    sample = {}
    for role, pids in (("web", stack.web_pids()), ("worker", stack.worker_pids())):
        for pid in pids:
            try:
                sample[f"{role}:{pid}"] = psutil.Process(pid).memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                pass
    return sample


async def soak(url: str, origin: str, questions: list[str], args, stack: Stack, samples: list) -> LoadResult:
    result = LoadResult()
    rng = random.Random(8)
    deadline = time.monotonic() + args.minutes * 60
    served = [0]

    async def slot(number: int) -> None:
        while time.monotonic() < deadline:
            served[0] += 1
            name = f"s{number}-{served[0]}"
            await customer(url, origin, rng.sample(questions, QUESTIONS_PER_CUSTOMER), args.think, result, name, rng)

    async def sampler() -> None:
        started = time.monotonic()
        while time.monotonic() < deadline:
            samples.append({"minute": round((time.monotonic() - started) / 60, 2), "rss_mb": rss_sample(stack)})
            print(
                f"  {samples[-1]['minute']:5.1f} min: {len(result.latencies_ms)} answers, drops {result.drops}, "
                f"errors {sum(result.errors.values())}; RSS MB "
                + ", ".join(f"{k}={v:.0f}" for k, v in samples[-1]["rss_mb"].items()),
                flush=True,
            )
            await asyncio.sleep(SAMPLE_SECONDS)

    result.started = time.perf_counter()
    await asyncio.gather(sampler(), *(slot(n) for n in range(args.customers)))
    result.finished = time.perf_counter()
    samples.append({"minute": args.minutes, "rss_mb": rss_sample(stack)})
    return result


def memory_trend(samples: list[dict], warm_up_minutes: float) -> dict:
    """Per process: RSS after warm-up, at the end, and the least-squares slope (MB per hour)."""
    trend = {}
    names = sorted({name for sample in samples for name in sample["rss_mb"]})
    for name in names:
        points = [(s["minute"], s["rss_mb"][name]) for s in samples if name in s["rss_mb"]]
        steady = [(m, v) for m, v in points if m >= warm_up_minutes] or points
        if len(steady) < 2:
            continue
        mean_m = sum(m for m, _ in steady) / len(steady)
        mean_v = sum(v for _, v in steady) / len(steady)
        var = sum((m - mean_m) ** 2 for m, _ in steady) or 1.0
        slope = sum((m - mean_m) * (v - mean_v) for m, v in steady) / var  # MB per minute
        trend[name] = {
            "after_warm_up_mb": round(steady[0][1], 1),
            "end_mb": round(steady[-1][1], 1),
            "growth_mb": round(steady[-1][1] - steady[0][1], 1),
            "slope_mb_per_hour": round(slope * 60, 1),
        }
    return trend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--think", type=float, default=2.0)
    parser.add_argument("--web", type=int, default=1)
    parser.add_argument("--warm-up-minutes", type=float, default=3.0)
    args = parser.parse_args()
    kb_file, questions = kb_files("demo")
    stack = Stack("soak", Path(tempfile.mkdtemp(prefix="bench-soak-")))
    stack.django_setup()
    samples: list[dict] = []
    try:
        stack.kb_load(kb_file)
        port = free_port()
        stack.web_start(port, args.web)
        print(
            f"soak: {args.customers} customers for {args.minutes} min, think {args.think} s, "
            f"{args.web} web process(es)",
            flush=True,
        )
        result = asyncio.run(
            soak(f"ws://127.0.0.1:{port}/ws/chat/", f"http://127.0.0.1:{port}", questions, args, stack, samples)
        )
        database = exactly_once(result)
    finally:
        stack.stop()
    trend = memory_trend(samples, args.warm_up_minutes)
    flat = all(abs(t["growth_mb"]) <= max(25.0, 0.05 * t["after_warm_up_mb"]) for t in trend.values())
    summary = {
        "customers": args.customers,
        "minutes": args.minutes,
        "think_seconds": args.think,
        "web_processes": args.web,
        "answers": result.answers,
        "conversations": len(result.answered),
        "answers_per_second": round(result.answers / result.seconds, 1) if result.seconds else 0,
        "p50_ms": round(percentile(result.latencies_ms, 0.5), 1),
        "p95_ms": round(percentile(result.latencies_ms, 0.95), 1),
        "p99_ms": round(percentile(result.latencies_ms, 0.99), 1),
        "errors": sum(result.errors.values()),
        "error_codes": result.errors,
        "drops": result.drops,
        "connect_failures": result.connect_failures,
        "database": database,
        "memory": trend,
        "memory_flat": flat,
        "samples": samples,
    }
    keys = ("after_warm_up_mb", "end_mb", "growth_mb", "slope_mb_per_hour")
    rows = [(name, *(t[key] for key in keys)) for name, t in trend.items()]
    print(table(rows, ("process", f"RSS MB at {args.warm_up_minutes:g} min", "at end", "growth", "MB/hour")))
    print(
        f"{result.answers} answers in {len(result.answered)} conversations, {summary['answers_per_second']}/s, "
        f"p50 {summary['p50_ms']} p95 {summary['p95_ms']} p99 {summary['p99_ms']} ms; errors {summary['errors']}, "
        f"drops {result.drops}; exactly once {database['exactly_once']}/{database['expected']}; "
        f"memory flat: {flat}"
    )
    print(f"saved {save('soak', summary).relative_to(BASE_DIR)}")


if __name__ == "__main__":
    main()
