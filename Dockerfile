# One image for the web server and the Celery worker (docker-compose.yml runs both).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    DJANGO_SETTINGS_MODULE=config.settings.production

WORKDIR /app
COPY requirements.txt .
# torch is pinned to a CPU build; point PIP_EXTRA_INDEX_URL at a CPU wheel index if your
# registry would otherwise resolve a CUDA build.
ARG PIP_EXTRA_INDEX_URL=""
RUN pip install -r requirements.txt

COPY . .
# var/index and var/imports exist in the image so that the named volumes docker-compose mounts
# there start owned by the app user (an empty volume takes the owner of the folder it covers).
RUN DJANGO_SECRET_KEY=collectstatic-only-key-not-used-at-runtime-0000000000000000 DJANGO_ALLOWED_HOSTS=localhost \
    python manage.py collectstatic --noinput \
    && useradd --create-home --uid 1000 app && mkdir -p var/index var/imports && chown -R app var
USER app

EXPOSE 8000
CMD ["python", "-m", "uvicorn", "config.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--lifespan", "off", "--ws-ping-interval", "20", "--ws-ping-timeout", "20", "--timeout-graceful-shutdown", "10", "--ws-per-message-deflate", "false", "--no-server-header"]
