"""config.db.postgresql: persistent connections health-checked by reading the socket, and by asking
the server only when it has sent something unasked (a connection it ended)."""

import os
import resource
import select
import socket
import time

import pytest
from django.db import connection, connections

postgresql = pytest.mark.skipif(connection.vendor != "postgresql", reason="the backend is PostgreSQL's")


@pytest.fixture
def persistent(db):
    """A connection of its own (outside the test's transaction), persistent and health-checked as
    in deployments (the test settings close connections after each request)."""
    settings = {**connection.settings_dict, "CONN_MAX_AGE": 60, "CONN_HEALTH_CHECKS": True}
    wrapper = type(connections["default"])(settings, alias="health-check-test")
    yield wrapper
    wrapper.close()


def backend_pid(wrapper) -> int:
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


@pytest.mark.django_db
@postgresql
def test_the_backend_is_ours():
    assert type(connections["default"]).__module__ == "config.db.postgresql.base"


@pytest.mark.django_db
@postgresql
def test_a_quiet_connection_is_reused_without_asking_the_server(persistent, monkeypatch):
    pid = backend_pid(persistent)
    asked = []
    monkeypatch.setattr(persistent, "is_usable", lambda: asked.append("SELECT 1") or True)
    for _ in range(3):
        persistent.close_if_unusable_or_obsolete()  # what every request (and pool trip) starts with
        assert backend_pid(persistent) == pid
    assert asked == []


@pytest.mark.django_db
@postgresql
def test_a_connection_the_server_ended_is_replaced_before_its_next_query(persistent):
    pid = backend_pid(persistent)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    deadline = time.monotonic() + 5
    while not select.select([persistent.connection.fileno()], [], [], 0.1)[0]:
        assert time.monotonic() < deadline, "the server never told the connection it was ended"
    persistent.close_if_unusable_or_obsolete()
    # No error reaches the caller: the check saw the server's message and reconnected.
    assert backend_pid(persistent) != pid


@pytest.mark.django_db
@postgresql
def test_a_connection_closed_on_our_side_is_replaced(persistent):
    pid = backend_pid(persistent)
    persistent.connection.close()
    persistent.close_if_unusable_or_obsolete()
    assert backend_pid(persistent) != pid


@pytest.mark.skipif(not hasattr(select, "poll"), reason="poll is what lifts select's limit")
def test_readability_is_read_for_descriptors_past_selects_limit():
    from config.db.postgresql.base import fd_readable

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    high = 1500
    if hard != resource.RLIM_INFINITY and hard <= high:
        pytest.skip(f"this machine allows only {hard} open files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, high + 1), hard))
    ours, theirs = socket.socketpair()
    try:
        os.dup2(ours.fileno(), high)
        assert not fd_readable(high)
        theirs.send(b"x")
        assert fd_readable(high)
        theirs.close()
        ours.recv(1)
        assert fd_readable(high)  # the peer hung up: end of file waits
    finally:
        os.close(high)
        ours.close()
        theirs.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
