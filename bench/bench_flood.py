"""Flood control under load (issue 10): N customers asking the demo knowledge base (5 questions
each, exponential think time), first alone, then again while one socket sends 1,000 message frames
a second on the same web process, with flood control's default limits. We report the customers'
latency percentiles side by side and what the flooding socket got back: answers, `busy`,
`rate_limited`, and frames that got nothing (must be 0).

Run: .venv/bin/python bench/bench_flood.py [--customers 50] [--think 1] [--rate 1000]   (part of `make bench`)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import sys
import tempfile
import time
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_load import free_port, kb_files, profile_start, profile_summary  # noqa: E402
from bench.common import RESULTS, machine, save, table  # noqa: E402
from bench.load_client import percentile, run_customers  # noqa: E402
from bench.stack import Stack  # noqa: E402

QUESTIONS_PER_CUSTOMER = 5


async def flood(url: str, origin: str, rate: float, stop: asyncio.Event) -> dict:
    """One socket sending message frames at ``rate`` a second until ``stop``; counts the replies."""
    ws = await websockets.connect(url, origin=origin, max_size=2**20)
    await ws.recv()  # session
    sent: set[str] = set()
    finals: dict[str, str] = {}

    async def read():
        async for raw in ws:
            frame = json.loads(raw)
            reply_to = frame.get("reply_to")
            if reply_to in sent and frame["type"] in ("answer", "suggestions", "error"):
                finals[reply_to] = frame.get("code", frame["type"])

    reader = asyncio.create_task(read())
    number, started = 0, time.perf_counter()
    while not stop.is_set():
        client_id = f"flood-{number}"
        sent.add(client_id)
        await ws.send(json.dumps({"type": "message", "id": client_id, "text": "where is my parcel?"}))
        number += 1
        # Paced by the clock, not by sleeps (asyncio's sleep granularity is ~1 ms).
        delay = started + number / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    deadline = time.monotonic() + 30
    while len(finals) < len(sent) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    still_open = ws.close_code is None
    reader.cancel()
    await ws.close()
    counts: dict[str, int] = {}
    for outcome in finals.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return {
        "frames_sent": len(sent),
        "seconds": round(time.perf_counter() - started, 1),
        "replies": counts,
        "unanswered": len(sent) - len(finals),
        "socket_open_after": still_open,
    }


def _flood_process(url: str, origin: str, rate: float, stop, results) -> None:
    # Its own process: the flood's client-side work must not slow the customers' clients down.
    async def run():
        done = asyncio.Event()

        async def watch():
            while not stop.is_set():
                await asyncio.sleep(0.05)
            done.set()

        watcher = asyncio.create_task(watch())
        outcome = await flood(url, origin, rate, done)
        watcher.cancel()
        return outcome

    results.put(asyncio.run(run()))


def with_flood(url: str, origin: str, sets: list[list[str]], think: float, rate: float, seed: int):
    """The customers' run while another process floods; returns both sides' results."""
    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    flooder = context.Process(target=_flood_process, args=(url, origin, rate, stop, results))
    flooder.start()
    time.sleep(1.0)  # the flood is on before the customers ask
    result = asyncio.run(run_customers(url, origin, sets, think, seed=seed))
    stop.set()
    outcome = results.get(timeout=120)
    flooder.join(timeout=30)
    return result, outcome


def web_cpu(stack: Stack) -> float:
    """CPU seconds the web server's processes have used so far."""
    import psutil

    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in stack.web_pids())


def summary(result) -> dict:
    return {
        "answers": result.answers,
        "p50_ms": round(percentile(result.latencies_ms, 0.5), 1),
        "p95_ms": round(percentile(result.latencies_ms, 0.95), 1),
        "p99_ms": round(percentile(result.latencies_ms, 0.99), 1),
        "errors": result.errors,
        "drops": result.drops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--think", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="frames a second from the flooding socket")
    parser.add_argument("--profile", action="store_true", help="py-spy the web process during the flood")
    args = parser.parse_args()

    kb_file, questions = kb_files("demo")
    workdir = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    stack = Stack("flood", workdir)
    # The customers all come from 127.0.0.1: no per-address cap. Every other limit at its default.
    for name in ("CHATBOT_MESSAGES_PER_MINUTE", "CHATBOT_FRAMES_PER_SECOND"):
        stack.env.pop(name, None)
    stack.django_setup()
    print("importing the demo knowledge base ...", flush=True)
    stack.kb_load(kb_file)
    rng = random.Random(10)
    sets = [rng.sample(questions, QUESTIONS_PER_CUSTOMER) for _ in range(args.customers)]
    try:
        port = free_port()
        stack.web_start(port, 1)
        url, origin = f"ws://127.0.0.1:{port}/ws/chat/", f"http://127.0.0.1:{port}"
        asyncio.run(run_customers(url, origin, sets[:10], 0.2, seed=1))  # warm-up
        cpu = web_cpu(stack)
        calm = asyncio.run(run_customers(url, origin, sets, args.think, seed=2))
        calm_cpu, cpu = web_cpu(stack) - cpu, web_cpu(stack)
        profiler = None
        if args.profile:
            profile_path = RESULTS / "profile-flood.txt"
            profile_path.unlink(missing_ok=True)
            profiler = profile_start(stack.serving_pids()[0], 8, profile_path)
        flooded, flood_result = with_flood(url, origin, sets, args.think, args.rate, seed=3)
        if profiler is not None:
            profiler.wait(timeout=60)
            print(json.dumps(profile_summary(profile_path), indent=1))
        flood_cpu = web_cpu(stack) - cpu
    finally:
        stack.stop()
    flood_result["web_cpu_seconds"] = round(flood_cpu, 2)
    flood_result["web_cpu_ms_per_frame_over_calm"] = round(
        1000 * (flood_cpu - calm_cpu * flooded.seconds / max(calm.seconds, 0.1)) / max(flood_result["frames_sent"], 1),
        3,
    )
    result = {
        "machine": machine(),
        "customers": args.customers,
        "think_seconds": args.think,
        "flood_rate": args.rate,
        "without_flood": summary(calm),
        "with_flood": summary(flooded),
        "flood": flood_result,
        "p95_ratio": round(summary(flooded)["p95_ms"] / max(summary(calm)["p95_ms"], 0.1), 2),
    }
    rows = [
        ("customers alone", *(result["without_flood"][k] for k in ("answers", "p50_ms", "p95_ms", "p99_ms"))),
        ("+ 1 flooding socket", *(result["with_flood"][k] for k in ("answers", "p50_ms", "p95_ms", "p99_ms"))),
    ]
    print(table(rows, ("run", "answers", "p50 ms", "p95 ms", "p99 ms")))
    print(
        f"flooding socket: {flood_result['frames_sent']} frames in {flood_result['seconds']} s -> "
        f"{flood_result['replies']}, unanswered {flood_result['unanswered']}, "
        f"open after: {flood_result['socket_open_after']}; p95 with/without flood: {result['p95_ratio']}x; "
        f"web CPU {flood_result['web_cpu_ms_per_frame_over_calm']} ms per flood frame"
    )
    print(f"saved {save('flood', result)}")


if __name__ == "__main__":
    main()
