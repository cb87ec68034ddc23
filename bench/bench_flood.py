"""Flood control under load (issue 10): N customers asking the demo knowledge base (5 questions
each, exponential think time) on one web process, in three conditions, interleaved and repeated:
alone; while an attacker (another process, its own address 127.0.0.2, a raw-socket client so that
its own CPU stays small) sends 1,000 message frames a second to the same web process and connects
again whenever it is closed; and while the same attacker floods a second web process on the same
machine (what the customers then lose is the machine's CPU, not their server's event loop). Flood
control runs with its default limits. We report the customers' latency percentiles side by side
and what the attacker got back (answers, `busy`, `rate_limited`, `flood_closed`).

Run: .venv/bin/python bench/bench_flood.py [--customers 50] [--think 1] [--rate 1000] [--repeats 3]
     (part of `make bench`)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_load import free_port, kb_files, profile_start, profile_summary  # noqa: E402
from bench.common import BASE_DIR, RESULTS, machine, save, table  # noqa: E402
from bench.load_client import percentile, run_customers  # noqa: E402
from bench.stack import Stack  # noqa: E402

QUESTIONS_PER_CUSTOMER = 5


MARKERS = {
    "final": b'"reply_to": "flood-',
    "answer": b'"type": "answer"',
    "rate_limited": b'"code": "rate_limited"',
    "busy": b'"code": "busy"',
    "flood_closed": b'"code": "flood_closed"',
}


def _client_frame(payload: bytes) -> bytes:
    # A masked text frame with an all-zero mask (the payload goes as is): the flood's client-side
    # cost must stay far below the server's, or on a 2-core machine it is the client that slows
    # the customers down.
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


# The attacker's own address (all of 127.0.0.0/8 is loopback): flood control bans it, not the
# customers' 127.0.0.1.
FLOOD_ADDRESS = "127.0.0.2"


def _open(host: str, port: int, origin: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection((host, port), source_address=(FLOOD_ADDRESS, 0))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws/chat/ HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head[:200]
    return sock, head.split(b"\r\n\r\n", 1)[1]


def raw_flood(host: str, port: int, origin: str, rate: float, stop, results) -> None:
    """A persistent attacker: message frames at ``rate`` a second, in 10 ms batches, until ``stop``,
    connecting again (every 100 ms) whenever its socket is closed. Replies are counted in the raw
    byte stream (no JSON parsing). Runs in its own process."""
    counts = dict.fromkeys(MARKERS, 0)
    sent = connects = 0
    started = time.perf_counter()
    still_open = False
    while not stop.is_set():
        sock, first = _open(host, port, origin)
        connects += 1
        closed = threading.Event()

        def read(sock=sock, tail=first, closed=closed):
            while True:
                try:
                    chunk = sock.recv(1 << 16)
                except OSError:
                    chunk = b""
                if not chunk:
                    closed.set()
                    return
                data = tail + chunk
                for name, marker in MARKERS.items():
                    # Markers cut by a chunk boundary are counted with the next chunk.
                    counts[name] += data.count(marker) - tail.count(marker)
                tail = data[-32:]

        threading.Thread(target=read, daemon=True).start()
        base = sent
        socket_started = time.perf_counter()
        while not stop.is_set() and not closed.is_set():
            due = base + int((time.perf_counter() - socket_started) * rate)
            batch = b"".join(
                _client_frame(b'{"type":"message","id":"flood-%d","text":"where is my parcel?"}' % number)
                for number in range(sent, due)
            )
            if batch:
                try:
                    sock.sendall(batch)
                except OSError:
                    break
                sent = due
            time.sleep(0.01)
        if stop.is_set():
            deadline = time.monotonic() + 30
            while counts["final"] < sent and time.monotonic() < deadline and not closed.is_set():
                time.sleep(0.05)
            still_open = not closed.is_set()
        sock.close()
        if not stop.is_set():
            time.sleep(0.1)
    results.put(
        {
            "frames_sent": sent,
            "seconds": round(time.perf_counter() - started, 1),
            "connects": connects,
            "replies": {name: counts[name] for name in ("answer", "busy", "rate_limited", "flood_closed")},
            "unanswered": sent - counts["final"],
            "socket_open_after": still_open,
        }
    )


def ban_lift() -> None:
    """Forget the attacker's ban, so that each flooded run starts with a fresh attacker."""
    import redis
    from django.conf import settings

    from chatbot.flood_control import KEY_PREFIX

    redis.Redis.from_url(settings.CHATBOT_FLOOD_REDIS_URL).delete(f"{KEY_PREFIX}:ban:{FLOOD_ADDRESS}")


def with_flood(port: int, origin: str, sets: list[list[str]], think: float, rate: float, seed: int, flood_port=None):
    """The customers' run (on ``port``) while another process floods ``flood_port`` (default: the
    same server); returns both sides' results."""
    ban_lift()
    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    target = flood_port or port
    flood_origin = f"http://127.0.0.1:{target}"
    flooder = context.Process(target=raw_flood, args=("127.0.0.1", target, flood_origin, rate, stop, results))
    flooder.start()
    time.sleep(1.0)  # the flood is on before the customers ask
    url = f"ws://127.0.0.1:{port}/ws/chat/"
    result = asyncio.run(run_customers(url, origin, sets, think, seed=seed))
    stop.set()
    outcome = results.get(timeout=120)
    flooder.join(timeout=30)
    return result, outcome


def other_server(stack: Stack, port: int) -> subprocess.Popen:
    """A second web server (same command, settings and database) for the flood to hit instead: what
    the customers then lose is the machine's CPU, not their own server's event loop."""
    from config.runstack import web_command

    process = subprocess.Popen(
        web_command("127.0.0.1", port),
        cwd=BASE_DIR,
        env={**os.environ, **stack.env, "WEB_CONCURRENCY": "1"},
        stdout=(stack.workdir / f"web-{port}.log").open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.3)
    raise SystemExit("the second web server did not become ready")


def merged_summary(results: list) -> dict:
    """Percentiles over every answer of several runs of one condition."""
    latencies = [value for result in results for value in result.latencies_ms]
    errors: dict[str, int] = {}
    for result in results:
        for code, count in result.errors.items():
            errors[code] = errors.get(code, 0) + count
    return {
        "answers": len(latencies),
        "p50_ms": round(percentile(latencies, 0.5), 1),
        "p95_ms": round(percentile(latencies, 0.95), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "p95_by_run_ms": [round(percentile(result.latencies_ms, 0.95), 1) for result in results],
        "errors": sum(errors.values()),
        "drops": sum(result.drops for result in results),
    }


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
    parser.add_argument("--repeats", type=int, default=3, help="runs of each condition, interleaved")
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
    conditions = ("customers alone", "+ 1 flooding socket", "+ the flood on another server")
    runs: dict[str, list] = {name: [] for name in conditions}
    floods = []
    try:
        port, elsewhere_port = free_port(), free_port()
        stack.web_start(port, 1)
        elsewhere = other_server(stack, elsewhere_port)
        url, origin = f"ws://127.0.0.1:{port}/ws/chat/", f"http://127.0.0.1:{port}"
        asyncio.run(run_customers(url, origin, sets[:10], 0.2, seed=1))  # warm-up
        profiler = None
        # Interleaved, so that the machine's drift spreads over every condition alike.
        for repeat in range(args.repeats):
            seed = 100 + repeat
            runs[conditions[0]].append(asyncio.run(run_customers(url, origin, sets, args.think, seed=seed)))
            if args.profile and repeat == 0:
                profile_path = RESULTS / "profile-flood.txt"
                profile_path.unlink(missing_ok=True)
                profiler = profile_start(stack.serving_pids()[0], 8, profile_path)
            flooded, flood_result = with_flood(port, origin, sets, args.think, args.rate, seed=seed)
            runs[conditions[1]].append(flooded)
            floods.append(flood_result)
            elsewhere_run, _ = with_flood(
                port, origin, sets, args.think, args.rate, seed=seed, flood_port=elsewhere_port
            )
            runs[conditions[2]].append(elsewhere_run)
            print(
                f"repeat {repeat + 1}: "
                + ", ".join(f"{name} p95 {summary(runs[name][-1])['p95_ms']} ms" for name in conditions),
                flush=True,
            )
        if profiler is not None:
            profiler.wait(timeout=60)
            print(json.dumps(profile_summary(profile_path), indent=1))
        os.killpg(elsewhere.pid, signal.SIGTERM)
        elsewhere.wait(timeout=30)
    finally:
        stack.stop()
    merged = {name: merged_summary(results) for name, results in runs.items()}
    result = {
        "machine": machine(),
        "customers": args.customers,
        "think_seconds": args.think,
        "flood_rate": args.rate,
        "repeats": args.repeats,
        "conditions": merged,
        "floods": floods,
        "p95_ratio_flooded_vs_alone": round(
            merged[conditions[1]]["p95_ms"] / max(merged[conditions[0]]["p95_ms"], 0.1), 2
        ),
        "p95_ratio_flood_elsewhere_vs_alone": round(
            merged[conditions[2]]["p95_ms"] / max(merged[conditions[0]]["p95_ms"], 0.1), 2
        ),
    }
    rows = [
        (name, *(merged[name][key] for key in ("answers", "p50_ms", "p95_ms", "p99_ms", "errors", "drops")))
        for name in conditions
    ]
    print(table(rows, ("run (all repeats pooled)", "answers", "p50 ms", "p95 ms", "p99 ms", "errors", "drops")))
    for flood_result in floods:
        print(
            f"attacker: {flood_result['connects']} connections, "
            f"{flood_result['frames_sent']} frames in {flood_result['seconds']} s -> "
            f"{flood_result['replies']}, unanswered {flood_result['unanswered']}, "
            f"open after: {flood_result['socket_open_after']}"
        )
    print(
        f"p95 flooded / alone: {result['p95_ratio_flooded_vs_alone']}x; "
        f"flood on another server / alone: {result['p95_ratio_flood_elsewhere_vs_alone']}x"
    )
    print(f"saved {save('flood', result)}")


if __name__ == "__main__":
    main()
