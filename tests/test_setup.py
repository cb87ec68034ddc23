"""Settings, the embedded Redis, and docker-compose declaring the commands `make run` starts."""

import io
import logging
import os
import secrets
import shutil
import subprocess
import sys

import pytest
import redis
import yaml
from django.conf import settings

from config import embedded_redis
from config.runstack import beat_command, web_command, worker_command

BASE = settings.BASE_DIR


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    """Run the project's Python with only the given settings variables (none inherited)."""
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL", "REDIS_URL", "VAR_DIR"))
    }
    return subprocess.run(
        [sys.executable, *args], cwd=BASE, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return run("-c", code, **env)


def run_manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    return run("manage.py", *args, **env)


def test_defaults_are_sqlite_and_the_embedded_redis(tmp_path):
    result = run_python(
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='config.settings.local'; django.setup();"
        "from django.conf import settings as s; layer = s.CHANNEL_LAYERS['default'];"
        "print(s.DATABASES['default']['ENGINE']); print(s.DATABASES['default']['NAME']);"
        "print(s.REDIS_EMBEDDED, s.REDIS_URL, s.CELERY_BROKER_URL, layer['CONFIG']['hosts'][0]['address']);"
        "print(layer['BACKEND'], layer['CONFIG']['hosts'][0]['socket_timeout']);"
        "print(s.DATABASES['default']['CONN_MAX_AGE'], s.DATABASES['default']['CONN_HEALTH_CHECKS'])",
        VAR_DIR=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    engine, name, redis_line, layer_line, connections_line = result.stdout.strip().splitlines()
    assert engine == "django.db.backends.sqlite3" and name == str(tmp_path / "db.sqlite3")
    sock = tmp_path / "redis.sock"
    assert redis_line == f"True unix://{sock}?db=0 redis+socket://{sock} unix://{sock}?db=0"
    # The layer's read timeout must outlast channels_redis's 5 s blocking receive (redis-py 8 defaults to 5 s).
    backend, socket_timeout = layer_line.split()
    assert backend == "chatbot.channel_layer.ResilientRedisChannelLayer" and float(socket_timeout) > 5
    assert connections_line == "60 True"


def test_the_env_file_is_read_before_any_setting(tmp_path):
    var_dir = tmp_path / "var-from-env-file"
    env_file = tmp_path / "deploy.env"
    env_file.write_text(f"VAR_DIR={var_dir}\nKB_SEARCH_TOP_K=7\n")
    code = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='config.settings.local'; django.setup();"
        "from django.conf import settings as s; print(s.VAR_DIR); print(s.DATABASES['default']['NAME']);"
        "print(s.REDIS_SOCKET, s.KB_INDEX_DIR, s.KB_SEARCH_TOP_K)"
    )
    result = run_python(code, DJANGO_ENV_FILE=str(env_file))
    assert result.returncode == 0, result.stderr
    # Everything derived from VAR_DIR follows the file's value.
    assert result.stdout.splitlines() == [
        str(var_dir),
        str(var_dir / "db.sqlite3"),
        f"{var_dir / 'redis.sock'} {var_dir / 'index'} 7",
    ]
    # A real environment variable wins over the file.
    result = run_python(code, DJANGO_ENV_FILE=str(env_file), VAR_DIR=str(tmp_path / "from-environment"))
    assert result.stdout.splitlines()[0] == str(tmp_path / "from-environment")


def test_test_settings_open_no_connection_at_import():
    code = (
        "import socket\n"
        "def refuse(*args, **kwargs): raise AssertionError(f'a connection at import: {args}')\n"
        "socket.create_connection = refuse\n"
        "socket.socket.connect = refuse\n"
        "from django.conf import settings\n"
        "print(settings.DATABASES['default']['ENGINE'], settings.POSTGRES_AVAILABLE, settings.REDIS_AVAILABLE)"
    )
    result = run_python(code, DJANGO_SETTINGS_MODULE="config.settings.test")
    assert result.returncode == 0, result.stderr
    # tests/conftest.py probes and decides; a process that only imports the settings never does.
    assert result.stdout.split() == ["config.db.postgresql", "None", "None"]


def test_urls_switch_to_postgres_and_redis():
    result = run_python(
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='config.settings.local'; django.setup();"
        "from django.conf import settings as s;"
        "db = s.DATABASES['default']; print(db['ENGINE'], db['NAME'], s.REDIS_EMBEDDED, s.CELERY_BROKER_URL)",
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/shop",
        REDIS_URL="redis://127.0.0.1:6379/3",
    )
    assert result.stdout.split() == ["config.db.postgresql", "shop", "False", "redis://127.0.0.1:6379/3"]


def test_production_refuses_to_start_without_a_secret_key():
    result = run_manage(
        "check", DJANGO_SETTINGS_MODULE="config.settings.production", DJANGO_ALLOWED_HOSTS="shop.example"
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


def test_production_passes_check_deploy():
    result = run_manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DJANGO_SETTINGS_MODULE="config.settings.production",
        DJANGO_ALLOWED_HOSTS="shop.example",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        CHATBOT_WARM_UP="0",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_embedded_redis_starts_answers_and_stops(tmp_path):
    sock = tmp_path / "r.sock"
    pid = embedded_redis.start(sock)
    try:
        assert pid and embedded_redis.is_running(sock)
        client = redis.Redis(unix_socket_path=str(sock))
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert embedded_redis.start(sock) is None  # already running: reused, not doubled
    finally:
        embedded_redis.stop(pid)
    for _ in range(50):
        if not embedded_redis.is_running(sock):
            break
        import time

        time.sleep(0.1)
    assert not embedded_redis.is_running(sock)


def compose() -> dict:
    return yaml.safe_load((BASE / "docker-compose.yml").read_text())


def test_compose_services_run_the_commands_make_run_starts():
    services = compose()["services"]
    assert {"postgres", "redis", "web", "worker", "worker-embed", "beat"} <= set(services)
    assert services["web"]["command"] == ["python", *web_command("0.0.0.0", 8000)[1:]]
    # Embedding has a worker of its own (it alone loads the models); `make run` runs one for both.
    assert services["worker"]["command"] == ["python", *worker_command(["chatbot"])[1:]]
    assert services["worker-embed"]["command"] == ["python", *worker_command(["chatbot-embed"])[1:]]
    assert services["beat"]["command"] == ["python", *beat_command()[1:]]


def test_docker_compose_config_accepts_the_file():
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("docker-compose is not installed (make test installs Debian's docker-compose)")
        pytest.skip("docker-compose is not installed")
    result = subprocess.run([binary, "config", "--quiet"], cwd=BASE, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_asgi_and_celery_default_to_production_settings():
    # Each module alone: config/__init__.py imports the Celery app first, so the ASGI check stubs it out.
    celery = run_python("import os; import config.celery; print(os.environ['DJANGO_SETTINGS_MODULE'])")
    assert celery.returncode == 0, celery.stderr
    assert celery.stdout.split() == ["config.settings.production"]
    asgi_alone = (
        "import os, sys, types; sys.modules['config.celery'] = types.SimpleNamespace(app=None);"
        "import config.asgi; from django.conf import settings; print(settings.SETTINGS_MODULE)"
    )
    without_secret = run_python(asgi_alone, CHATBOT_WARM_UP="0")
    assert without_secret.returncode != 0 and "DJANGO_SECRET_KEY must be set" in without_secret.stderr
    deployed = run_python(
        asgi_alone,
        CHATBOT_WARM_UP="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="shop.example",
    )
    assert deployed.returncode == 0, deployed.stderr
    assert deployed.stdout.split() == ["config.settings.production"]


def test_runstack_starts_its_children_on_its_own_settings_and_an_empty_metrics_folder(settings, tmp_path, monkeypatch):
    from django.core.management.base import OutputWrapper
    from django.core.management.color import no_style

    from config import runstack

    started = []
    monkeypatch.setattr(runstack.subprocess, "Popen", lambda command, env, **kwargs: started.append(env))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    settings.VAR_DIR = tmp_path
    (tmp_path / "prometheus").mkdir()
    (tmp_path / "prometheus" / "counter_4242.db").write_bytes(b"from an earlier run")
    stack = runstack.Stack(OutputWrapper(io.StringIO()), no_style())
    stack._spawn("worker", runstack.worker_command(runstack.worker_queues()))
    stack._spawn("web", runstack.web_command("127.0.0.1", 8000), {**runstack.web_env(), **runstack.metrics_env()})
    worker_env, web_env = started
    assert worker_env["DJANGO_SETTINGS_MODULE"] == web_env["DJANGO_SETTINGS_MODULE"] == settings.SETTINGS_MODULE
    assert web_env["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "prometheus")
    assert list((tmp_path / "prometheus").iterdir()) == []


@pytest.mark.django_db
def test_runstack_prints_the_admin_password_and_logs_it_nowhere(settings, tmp_path, caplog):
    from django.core.management.base import OutputWrapper
    from django.core.management.color import no_style

    from config.runstack import Stack

    caplog.set_level(logging.DEBUG)
    settings.VAR_DIR = tmp_path
    login = Stack(OutputWrapper(io.StringIO()), no_style())._admin_login()
    password = (tmp_path / "admin-password.txt").read_text().strip()
    assert len(password) >= 16 and f"password {password}" in login  # what the terminal shows, once
    assert password not in caplog.text


def test_compose_healthchecks_ask_the_services_themselves():
    services = compose()["services"]
    web = services["web"]["healthcheck"]["test"]
    assert web[0] == "CMD" and "http://127.0.0.1:8000/healthz" in web[-1]
    for worker in ("worker", "worker-embed"):
        kind, command = services[worker]["healthcheck"]["test"]
        assert kind == "CMD-SHELL" and "celery -A config inspect ping --destination celery@$$HOSTNAME" in command
    assert "celerybeat-schedule" in services["beat"]["healthcheck"]["test"][-1]
    # The web processes add up their metrics in a folder that starts empty with the container.
    assert services["web"]["environment"]["PROMETHEUS_MULTIPROC_DIR"] in services["web"]["tmpfs"]


def test_beat_keeps_its_schedule_under_the_data_directory(settings):
    from pathlib import Path

    assert Path(settings.CELERY_BEAT_SCHEDULE_FILENAME).parent == settings.VAR_DIR
    assert "--schedule" not in beat_command()  # not a path relative to the checkout
