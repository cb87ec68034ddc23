"""Test settings: PostgreSQL and Redis on 127.0.0.1 (the services CI provides).

When a service is missing and CI is not set, tests fall back to SQLite and skip what needs Redis;
with CI=true the suite fails instead (see tests/conftest.py).
"""

import socket

from config.settings.base import *  # noqa: F403
from config.settings.base import VAR_DIR, channel_layers, env


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


SECRET_KEY = "test-only-key"
# Tests change thresholds and ask at once.
CHATBOT_THRESHOLDS_CACHE_SECONDS = env.float("CHATBOT_THRESHOLDS_CACHE_SECONDS", default=0.0)
DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

POSTGRES_AVAILABLE = _reachable("127.0.0.1", 5432)
REDIS_AVAILABLE = _reachable("127.0.0.1", 6379)

if "DATABASE_URL" not in env:
    if POSTGRES_AVAILABLE:
        DATABASES = {"default": env.db_url_config("postgres://postgres@127.0.0.1:5432/test")}
    else:
        DATABASES = {
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(VAR_DIR / "test-db.sqlite3"),
                "TEST": {"NAME": str(VAR_DIR / "test-db.sqlite3")},
                "OPTIONS": {"timeout": 20},
            }
        }

# As in base: one pool process on SQLite (one writer at a time), two otherwise.
CELERY_WORKER_CONCURRENCY = env.int(
    "CELERY_WORKER_CONCURRENCY", default=1 if DATABASES["default"]["ENGINE"].endswith("sqlite3") else 2
)

# Redis database 15 keeps test traffic away from a developer's data in database 0.
TEST_REDIS_URL = env.str("TEST_REDIS_URL", default="redis://127.0.0.1:6379/15")
REDIS_URL = TEST_REDIS_URL
REDIS_EMBEDDED = False
CELERY_BROKER_URL = TEST_REDIS_URL if REDIS_AVAILABLE else "memory://"
CELERY_TASK_DEFAULT_QUEUE = "chatbot-test"
# In-process consumer tests use the in-memory layer; a real server process a test starts
# (tests/integration/servers.py) sets TEST_CHANNEL_REDIS_URL and runs on the Redis layer, as deployed.
if env.str("TEST_CHANNEL_REDIS_URL", default=""):
    CHANNEL_LAYERS = channel_layers(env.str("TEST_CHANNEL_REDIS_URL"))
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True

# Tests that need an LLM start a local OpenAI-compatible server (the llm_server fixture, or
# TEST_LLM_BASE_URL for a server process a test starts); a developer's own LLM_BASE_URL must not
# leak into the others.
LLM_BASE_URL = env.str("TEST_LLM_BASE_URL", default="")
LLM_BACKEND = "chatbot.llm.OpenAIChatLLM"
