"""A local server speaking the OpenAI chat-completions protocol, for tests through the real ``openai`` client.

It runs a standard-library ``ThreadingHTTPServer`` in a daemon thread on 127.0.0.1 (a free port) and serves
``POST /v1/chat/completions`` (plain JSON, or server-sent events when the request asks for ``stream``) and
``GET /v1/models``. Every request is recorded. Each request takes the next scripted behaviour from a queue,
or asks the default responder when the queue is empty::

    server = LlmTestServer().start()
    server.push(error(429, retry_after=0.1), reply("Hello", chunks=["Hel", "lo\\nSOURCES: 3"]))
    server.default = lambda body: reply("standalone question") if "standalone" in str(body) else reply("NO_ANSWER")
    ...
    server.requests[0].body["messages"]
    server.stop()

Handlers that sleep (``slow``, ``stall_after``) wake up when the server stops, and stopping closes every open
connection, so a hanging request never keeps a test (or the process) alive.

Like a real server it reports ``usage.prompt_tokens`` (words of the messages the model sees), and with
``drop_system`` it does what chat templates without a system role do (llama.cpp's ``--chat_format gemma``):
system messages never reach the model, so they add no prompt tokens and responders never see them. A
one-token, non-streaming request (the client's start-up probe of that) is answered directly, without
taking a scripted behaviour, and is listed in ``probe_requests``, not ``completion_requests``.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# --- Behaviours: what the server does with one request ----------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A successful completion; streamed as ``chunks`` when the client asks for a stream."""

    text: str
    chunks: tuple[str, ...]
    finish_reason: str = "stop"
    chunk_delay: float = 0.0


@dataclass(frozen=True)
class Error:
    """An HTTP error with an OpenAI-style JSON error body."""

    status: int
    message: str
    retry_after: float | None = None


@dataclass(frozen=True)
class Slow:
    """Wait ``seconds`` before sending anything (headers included), then behave like ``then``."""

    seconds: float
    then: Behaviour


@dataclass(frozen=True)
class StallAfter:
    """Stream the first ``n_chunks`` chunks of ``reply``, then hang for ``seconds`` and drop the connection."""

    n_chunks: int
    seconds: float
    reply: Reply


@dataclass(frozen=True)
class Disconnect:
    """Close the connection without answering (the client sees a connection error)."""


Behaviour = Reply | Error | Slow | StallAfter | Disconnect
Responder = Callable[[dict], Behaviour]


def reply(text: str = "", *, chunks: list[str] | None = None, finish_reason: str = "stop", chunk_delay: float = 0.0):
    """A completion of ``text``; a stream sends ``chunks`` (default: one chunk per word, like tokens)."""
    if chunks is None:
        chunks = re.findall(r"\S+\s*|\s+", text) or [""]
    else:
        text = "".join(chunks)
    return Reply(text=text, chunks=tuple(chunks), finish_reason=finish_reason, chunk_delay=chunk_delay)


def error(status: int, message: str | None = None, *, retry_after: float | None = None) -> Error:
    """An HTTP error response; ``retry_after`` adds a Retry-After header (seconds)."""
    return Error(status=status, message=message or f"scripted error {status}", retry_after=retry_after)


def slow(seconds: float, then: Behaviour | None = None) -> Slow:
    """Delay the whole response (before the headers) by ``seconds``."""
    return Slow(seconds=seconds, then=then or reply("This slow reply arrived too late."))


def stall_after(n_chunks: int, seconds: float, then: Reply | None = None) -> StallAfter:
    """Stream ``n_chunks`` chunks of ``then`` and hang for ``seconds`` before dropping the connection."""
    return StallAfter(n_chunks=n_chunks, seconds=seconds, reply=then or reply("Part of an answer that never ends."))


def disconnect() -> Disconnect:
    """Drop the connection before answering."""
    return Disconnect()


def cited(text: str, **options) -> Responder:
    """A responder that answers ``text`` citing the first FAQ entry the prompt gave (a well-behaved
    model's reply, with the SOURCES line first as the prompt asks); NO_ANSWER when none was given."""

    def respond(body: dict) -> Behaviour:
        prompt = json.dumps(body.get("messages") or [])
        given = re.search(r"<<<FAQ ENTRY id=(\d+)>>>", prompt)
        if given is None:
            return reply("NO_ANSWER")
        return reply(f"SOURCES: {given.group(1)}\n{text}", **options)

    return respond


def default_responder(body: dict) -> Behaviour:
    """The reply when nothing was scripted: a short, uncited answer."""
    return reply("Hello from the test LLM server.")


# --- Recording -------------------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request as the server received it; ``headers`` has lower-case names."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict | None
    received_at: float = field(default_factory=time.monotonic)


# --- The server ------------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Handlers may be hanging on purpose; stop() must not wait for them.
    block_on_close = False
    owner: LlmTestServer


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so a stream uses chunked encoding: a dropped stream is then a protocol error for the client,
    # not a silently short (but "complete") body.
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self):
        super().setup()
        self.server.owner._track(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.owner._untrack(self.connection)

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass

    def do_GET(self):
        owner = self.server.owner
        owner._record(self, None)
        if self.path.split("?")[0].rstrip("/").endswith("/models"):
            self._send_json(200, {"object": "list", "data": [_model_card(owner.model)]})
        else:
            self._send_json(404, _error_body(404, f"no route for GET {self.path}"))

    def do_POST(self):
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        owner._record(self, body)
        if not self.path.split("?")[0].rstrip("/").endswith("/chat/completions"):
            self._send_json(404, _error_body(404, f"no route for POST {self.path}"))
            return
        if not isinstance(body, dict):
            self._send_json(400, _error_body(400, "the body is not a JSON object"))
            return
        try:
            seen = owner.seen(body)
            if _is_probe(body):
                self._send_json(200, _completion(seen, Reply(text="OK", chunks=("OK",), finish_reason="length")))
                return
            self._behave(owner._next_behaviour(seen), seen)
        except OSError:
            # The client went away (timeout, cancellation); nothing left to answer.
            self.close_connection = True

    def _behave(self, behaviour: Behaviour, body: dict):
        owner = self.server.owner
        if isinstance(behaviour, Slow):
            if owner._stopped.wait(behaviour.seconds):
                return
            self._behave(behaviour.then, body)
        elif isinstance(behaviour, Error):
            headers = {"Retry-After": f"{behaviour.retry_after:g}"} if behaviour.retry_after is not None else {}
            self._send_json(behaviour.status, _error_body(behaviour.status, behaviour.message), headers)
        elif isinstance(behaviour, Disconnect):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif isinstance(behaviour, StallAfter):
            self._stream(body, behaviour.reply, stall=behaviour)
        elif body.get("stream"):
            self._stream(body, behaviour)
        else:
            self._send_json(200, _completion(body, behaviour))

    def _stream(self, body: dict, script: Reply, stall: StallAfter | None = None):
        owner = self.server.owner
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        completion_id = f"chatcmpl-test-{time.monotonic_ns()}"
        self._write_event(_chunk(body, completion_id, {"role": "assistant", "content": ""}))
        for index, piece in enumerate(script.chunks):
            if stall is not None and index == stall.n_chunks:
                owner._stopped.wait(stall.seconds)
                # Drop the connection mid-body, as a crashed or killed upstream would.
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if script.chunk_delay and owner._stopped.wait(script.chunk_delay):
                return
            self._write_event(_chunk(body, completion_id, {"content": piece}))
        self._write_event(_chunk(body, completion_id, {}, finish_reason=script.finish_reason))
        self._write_chunked(b"data: [DONE]\n\n")
        self._write_chunked(b"")

    def _write_event(self, payload: dict):
        self._write_chunked(f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode())

    def _write_chunked(self, data: bytes):
        # One HTTP chunk per event, flushed at once, so the client sees tokens as they are "generated".
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _send_json(self, status: int, payload: dict, headers: dict | None = None):
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.close_connection = True
        self.wfile.write(data)
        self.wfile.flush()


class LlmTestServer:
    """An OpenAI-compatible HTTP server on 127.0.0.1 with scripted behaviours and recorded requests."""

    def __init__(self, *, model: str = "test-model", drop_system: bool = False):
        self.model = model
        self.drop_system = drop_system
        self.default: Responder | Behaviour = default_responder
        self.requests: list[RecordedRequest] = []
        self._queue: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The URL to give the openai client, e.g. ``http://127.0.0.1:54321/v1``."""
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def completion_requests(self) -> list[RecordedRequest]:
        """The recorded chat-completions requests (probes aside), in arrival order."""
        with self._lock:
            return [r for r in self.requests if _is_completion(r) and not _is_probe(r.body)]

    @property
    def probe_requests(self) -> list[RecordedRequest]:
        """The recorded one-token requests (the client's system-role probe)."""
        with self._lock:
            return [r for r in self.requests if _is_completion(r) and _is_probe(r.body)]

    def seen(self, body: dict) -> dict:
        """``body`` as the model sees it: without system messages when ``drop_system``."""
        if not self.drop_system:
            return body
        return {**body, "messages": [m for m in body.get("messages") or [] if m.get("role") != "system"]}

    def push(self, *behaviours: Behaviour) -> LlmTestServer:
        """Queue behaviours for the next requests, in order."""
        with self._lock:
            self._queue.extend(behaviours)
        return self

    def start(self) -> LlmTestServer:
        """Listen on a free port and serve from a daemon thread."""
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="llm-test-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake sleeping handlers and close every open connection."""
        self._stopped.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LlmTestServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # Called from handler threads.

    def _next_behaviour(self, body: dict) -> Behaviour:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        return self.default(body) if callable(self.default) else self.default

    def _record(self, handler: BaseHTTPRequestHandler, body: dict | None) -> None:
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._lock:
            self.requests.append(RecordedRequest(method=handler.command, path=handler.path, headers=headers, body=body))

    def _track(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _untrack(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)


# --- Protocol payloads ----------------------------------------------------------------------------------------


def _model_card(model: str) -> dict:
    return {"id": model, "object": "model", "created": 0, "owned_by": "tests"}


def _error_body(status: int, message: str) -> dict:
    kind = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_exceeded"}
    return {"error": {"message": message, "type": kind.get(status, "server_error"), "param": None, "code": None}}


def _completion(body: dict, script: Reply) -> dict:
    return {
        "id": f"chatcmpl-test-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "test-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": script.text},
                "finish_reason": script.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": _prompt_tokens(body),
            "completion_tokens": len(script.chunks),
            "total_tokens": _prompt_tokens(body) + len(script.chunks),
        },
    }


def _prompt_tokens(body: dict) -> int:
    """A token count of the messages the model sees (words and CJK characters, plus 4 per message)."""
    messages = body.get("messages") or []
    words = sum(len(re.findall(r"[\u4e00-\u9fff]|[^\W_]+", str(m.get("content") or ""))) for m in messages)
    return words + 4 * len(messages)


def _is_completion(request: RecordedRequest) -> bool:
    return request.path.split("?")[0].endswith("/chat/completions")


def _is_probe(body: dict | None) -> bool:
    return isinstance(body, dict) and body.get("max_tokens") == 1 and not body.get("stream")


def _chunk(body: dict, completion_id: str, delta: dict, finish_reason: str | None = None) -> dict:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model") or "test-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
