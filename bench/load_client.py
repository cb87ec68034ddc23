"""Simulated customers on the `websockets` library: each connects, asks questions with a random
think time between them, and records how long each answer took, errors and dropped connections.
The client ids it used are checked against the database afterwards (exactly once)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field

import websockets

ANSWER_TIMEOUT_SECONDS = 120


@dataclass
class LoadResult:
    """What the customers of one run saw."""

    latencies_ms: list[float] = field(default_factory=list)
    # When each answered question was sent (perf_counter), in the order of latencies_ms.
    sent_at: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    drops: int = 0
    connect_failures: int = 0
    not_ready_retries: int = 0
    # conversation id -> client ids answered in it
    answered: dict[str, list[str]] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)
    started: float = 0.0
    finished: float = 0.0

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    @property
    def answers(self) -> int:
        return len(self.latencies_ms)

    @property
    def seconds(self) -> float:
        return self.finished - self.started


def percentile(values: list[float], share: float) -> float:
    """The ``share`` percentile (nearest rank) of ``values``; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


async def _ask(ws, result: LoadResult, client_id: str, text: str) -> bool:
    """Send one question and wait for its reply; False when the customer should stop."""
    frame_out = json.dumps({"type": "message", "id": client_id, "text": text})
    sent = time.perf_counter()
    await ws.send(frame_out)
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=ANSWER_TIMEOUT_SECONDS))
        if frame.get("reply_to") != client_id:
            continue
        if frame["type"] in ("answer", "suggestions"):
            result.latencies_ms.append((time.perf_counter() - sent) * 1000)
            result.sent_at.append(sent)
            result.sources[frame.get("source", "clarify")] = result.sources.get(frame.get("source", "clarify"), 0) + 1
            return True
        if frame["type"] == "error":
            if frame.get("retry_after_ms"):
                # The widget's behaviour: the same message, same id, after the pause the server asked for.
                result.not_ready_retries += 1
                await asyncio.sleep(frame["retry_after_ms"] / 1000)
                await ws.send(frame_out)
                continue
            result.error(frame.get("code", "error"))
            return True


async def customer(
    url: str,
    origin: str,
    questions: list[str],
    think_seconds: float,
    result: LoadResult,
    name: str,
    rng: random.Random,
    start_gate: asyncio.Event | None = None,
) -> None:
    """One customer: connect, ask ``questions`` with exponential think times (mean ``think_seconds``)."""
    try:
        ws = await websockets.connect(url, origin=origin, open_timeout=60, max_size=2**20)
    except (TimeoutError, OSError, websockets.WebSocketException):
        result.connect_failures += 1
        return
    try:
        session = json.loads(await asyncio.wait_for(ws.recv(), timeout=60))
        conversation = session["conversation"]
        answered = result.answered.setdefault(conversation, [])
        if start_gate is not None:
            await start_gate.wait()
        for number, text in enumerate(questions):
            await asyncio.sleep(rng.expovariate(1 / think_seconds) if think_seconds > 0 else 0)
            client_id = f"{name}-{number}"
            if not await _ask(ws, result, client_id, text):
                return
            answered.append(client_id)
    except websockets.ConnectionClosed:
        result.drops += 1
    except TimeoutError:
        result.error("timeout")
    finally:
        await ws.close()


async def run_customers(
    url: str,
    origin: str,
    question_sets: list[list[str]],
    think_seconds: float,
    *,
    seed: int = 7,
    connect_per_second: float = 500.0,
) -> LoadResult:
    """Connect one customer per question set (``connect_per_second`` at most), then let them all
    ask at once; returns what they saw."""
    result = LoadResult()
    rng = random.Random(seed)
    gate = asyncio.Event()
    tasks = []
    for number, questions in enumerate(question_sets):
        tasks.append(
            asyncio.create_task(customer(url, origin, questions, think_seconds, result, f"u{seed}-{number}", rng, gate))
        )
        await asyncio.sleep(1 / connect_per_second)
    # The clock starts when everyone is connected (or failed to) and questions may flow.
    deadline = time.monotonic() + 60
    while len(result.answered) + result.connect_failures + result.drops < len(question_sets):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    result.started = time.perf_counter()
    gate.set()
    await asyncio.gather(*tasks)
    result.finished = time.perf_counter()
    return result
