"""What a web process runs beside its event loop: the thread pool for per-socket work, the query
embedding batcher and the background index loader, all started once at start-up.

Why a pool of its own: Channels' ``database_sync_to_async`` is thread-sensitive by default, so
every database call, embedding and search of every socket of a process would queue on one thread.
Here each socket's synchronous steps run in a pool of ``CHATBOT_ANSWER_THREADS`` threads (each with
its own persistent database connection), embedding goes through the batcher's one-thread-per-core
workers, and nothing is loaded inside a customer's request.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import gc
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import SyncToAsync
from django.conf import settings
from django.db import close_old_connections

from chatbot.logging_context import log_context, log_context_bound

logger = logging.getLogger(__name__)

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_started = False


def answer_pool() -> ThreadPoolExecutor:
    """The process's pool for the synchronous steps of answering (database, search)."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=settings.CHATBOT_ANSWER_THREADS, thread_name_prefix="answer")
    return _pool


_thread_state = threading.local()


def _call_in_thread_context(func: Callable, *args, **kwargs):
    # Django keeps connections in asgiref Locals, which follow contextvars: run as sync_to_async
    # runs it, in the calling task's context, a socket's connection would follow the socket from
    # thread to thread, never be closed by the thread that opened it, and outlive the socket. Each
    # pool thread therefore runs its calls in a context of its own: one persistent connection per
    # thread, tidied before and after each call as Channels' database_sync_to_async does.
    context = getattr(_thread_state, "context", None)
    if context is None:
        context = _thread_state.context = contextvars.Context()
    # The caller's log fields (its conversation id) do go along: lines logged in the pool carry them.
    return context.run(_call_tidily, func, args, kwargs, log_context())


def _call_tidily(func: Callable, args: tuple, kwargs: dict, log_fields: dict):
    close_old_connections()
    try:
        with log_context_bound(log_fields):
            return func(*args, **kwargs)
    finally:
        close_old_connections()


def in_pool(func: Callable) -> Callable:
    """``func`` as an awaitable that runs in :func:`answer_pool` on that thread's own persistent
    database connection, so one socket's database work never waits behind another's."""
    return SyncToAsync(functools.partial(_call_in_thread_context, func), thread_sensitive=False, executor=answer_pool())


def web_process_start() -> None:
    """Load the embedder, start the query batcher and the background index loader; once per
    process (the ASGI module calls it when a web server imports it)."""
    global _started
    if _started:
        return
    _started = True
    from kb.query_batching import query_batching_start
    from kb.selectors import current_index, search_warm_up

    search_warm_up()
    workers = settings.KB_QUERY_WORKERS or os.cpu_count() or 1
    query_batching_start(
        workers=workers, max_batch=settings.KB_QUERY_BATCH_MAX, max_wait=settings.KB_QUERY_BATCH_WAIT_MS / 1000
    )
    current_index.start_background(after_poll=close_old_connections, after_load=long_lived_objects_freeze)
    gc.collect()
    long_lived_objects_freeze()
    threading.Thread(target=llm_probe, name="llm-probe", daemon=True).start()
    logger.info("web process %s ready to serve (%d embedding workers)", os.getpid(), workers)


def llm_probe() -> None:
    """Find out at start-up whether the LLM server keeps system messages, and log which way the
    instructions will be sent (a server that cannot be reached is probed again on the first answer)."""
    from chatbot.llm import get_llm

    llm = get_llm()
    if llm is None or not hasattr(llm, "system_role_resolve"):
        return
    try:
        asyncio.run(llm.system_role_resolve())  # logs what it found
    except Exception as exc:  # noqa: BLE001 - the server may come up later; answers probe again
        logger.warning("LLM server %s did not answer the start-up probe: %s", llm.config.base_url, exc)


def long_lived_objects_freeze() -> None:
    """Keep the objects alive now (models, tokenizers, Django, the index) out of the cycle
    collector's full collections from now on.

    A web process holds ~600,000 such objects; a full collection walks them all with the GIL held,
    ~280 ms here, during which no socket of the process is served. Under load one came every few
    seconds: a stall of several hundred milliseconds for every customer of the process, most of
    the p95 at 200 customers (bench/bench_load.py). Frozen objects are still freed by reference
    counting; only cycles among them stay, and these are long-lived by construction."""
    gc.freeze()


async def index_wait(timeout: float) -> bool:
    """Whether this process has a search index, waiting up to ``timeout`` seconds for one."""
    from kb.selectors import current_index, search_ready

    # With the background loader the check reads a reference; without it (tests, commands) it may
    # query the database, so it runs in the pool.
    if current_index.background:

        async def check() -> bool:
            return search_ready()
    else:
        check = in_pool(search_ready)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if await check():
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.1)
