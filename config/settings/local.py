"""Local development and the `make run` demo: debug on, a throwaway secret key."""

from config.settings.base import *  # noqa: F403
from config.settings.base import LOG_LEVEL, env
from config.structured_logging import logging_config

DEBUG = env.bool("DJANGO_DEBUG", default=True)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="insecure-local-only-key-change-me")
# Serve static files straight from the apps (no collectstatic) and pick up edits.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
# A terminal reads better than JSON; LOG_FORMAT=json gives production's lines.
LOG_FORMAT = env.str("LOG_FORMAT", default="console")
LOGGING = logging_config(log_format=LOG_FORMAT, level=LOG_LEVEL)
