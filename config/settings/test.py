"""Test settings: PostgreSQL and Redis on 127.0.0.1 (the services CI provides).

Importing them opens no connection: every process a test starts imports them too, and a settings
module must not probe the network. The pytest process probes once, in tests/conftest.py, and when a
service is missing and CI is not set falls back to SQLite (SQLITE_TEST_DATABASE) and skips what needs
Redis; with CI=true the suite fails instead.
"""

from config.settings.base import *  # noqa: F403
from config.settings.base import VAR_DIR, celery_queues, channel_layers, database_config, env

SECRET_KEY = "test-only-key"
# Tests change thresholds and ask at once.
CHATBOT_THRESHOLDS_CACHE_SECONDS = env.float("CHATBOT_THRESHOLDS_CACHE_SECONDS", default=0.0)
DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Whether PostgreSQL (the default database, when it is PostgreSQL) and Redis (TEST_REDIS_URL) answer:
# None until tests/conftest.py has probed them in the pytest process (child processes never do).
POSTGRES_AVAILABLE = None
REDIS_AVAILABLE = None

if "DATABASE_URL" not in env:
    DATABASES = {"default": database_config("postgres://postgres@127.0.0.1:5432/test")}
# Connections closed after each use, as before persistent connections existed: an answer-pool
# thread's idle connection would otherwise keep the test database from being dropped at the end.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=0)
# What tests/conftest.py switches to when PostgreSQL is missing (and neither DATABASE_URL nor CI is set).
SQLITE_TEST_DATABASE = {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": str(VAR_DIR / "test-db.sqlite3"),
    "TEST": {"NAME": str(VAR_DIR / "test-db.sqlite3")},
    "OPTIONS": {"timeout": 20},
}

# As in base: one pool process on SQLite (one writer at a time), two otherwise.
CELERY_WORKER_CONCURRENCY = env.int(
    "CELERY_WORKER_CONCURRENCY", default=1 if DATABASES["default"]["ENGINE"].endswith("sqlite3") else 2
)

# Redis database 15 keeps test traffic away from a developer's data in database 0.
TEST_REDIS_URL = env.str("TEST_REDIS_URL", default="redis://127.0.0.1:6379/15")
REDIS_URL = TEST_REDIS_URL
REDIS_EMBEDDED = False
# tests/conftest.py swaps in "memory://" when Redis is missing (before Celery reads its configuration).
CELERY_BROKER_URL = TEST_REDIS_URL
CELERY_TASK_DEFAULT_QUEUE = "chatbot-test"
CELERY_EMBED_QUEUE = "chatbot-test-embed"
CELERY_TASK_QUEUES, CELERY_TASK_ROUTES = celery_queues(CELERY_TASK_DEFAULT_QUEUE, CELERY_EMBED_QUEUE)
# In-process consumer tests use the in-memory layer; a real server process a test starts
# (tests/integration/servers.py) sets TEST_CHANNEL_REDIS_URL and runs on the Redis layer, as deployed.
if env.str("TEST_CHANNEL_REDIS_URL", default=""):
    CHANNEL_LAYERS = channel_layers(env.str("TEST_CHANNEL_REDIS_URL"))
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
# Flood control follows the channel layer's Redis, so that a test restarting that Redis also shows
# flood control letting customers through while it is away.
CHATBOT_FLOOD_REDIS_URL = env.str("TEST_CHANNEL_REDIS_URL", default="") or TEST_REDIS_URL
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    # In memory: a test's staged imports leave no files behind (one process serves both requests).
    "kb_imports": {"BACKEND": "django.core.files.storage.InMemoryStorage"},
}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True

# Tests that need an LLM start a local OpenAI-compatible server (the llm_server fixture, or
# TEST_LLM_BASE_URL for a server process a test starts); a developer's own LLM_BASE_URL must not
# leak into the others.
LLM_BASE_URL = env.str("TEST_LLM_BASE_URL", default="")
LLM_BACKEND = "chatbot.llm.OpenAIChatLLM"
