"""Django's PostgreSQL backend with a health check that costs no round trip while the server has
said nothing.

With persistent connections and CONN_HEALTH_CHECKS, Django checks a connection with ``SELECT 1``
before its first query after every request or task (here: every customer message, since each trip
to the answer pool tidies its connection as a request does). That was one round trip in three per
message. A server that ends a connection (a restart, an idle timeout, pg_terminate_backend) sends
an error and closes it, which leaves the socket readable; an idle healthy connection has nothing
to read. So the check asks the socket first and runs Django's ``SELECT 1`` only when something
arrived unasked. A connection that dies silently (a cable pulled between hosts) fails its next
query as it would have without health checks, and Django replaces it after that error.
"""

from __future__ import annotations

import select

from django.db.backends.postgresql.base import DatabaseWrapper as PostgresDatabaseWrapper


class DatabaseWrapper(PostgresDatabaseWrapper):
    """The PostgreSQL backend whose per-request health check reads the socket instead of the server."""

    def close_if_health_check_failed(self):
        """Django's check, run only when the server has sent something unasked (or is gone)."""
        if self.connection is None or not self.health_check_enabled or self.health_check_done:
            return
        if self._socket_quiet():
            self.health_check_done = True
            return
        super().close_if_health_check_failed()

    def _socket_quiet(self) -> bool:
        """Whether the connection is open on our side and nothing waits to be read from it."""
        if self.connection.closed:
            return False
        try:
            return not fd_readable(self.connection.fileno())
        except (OSError, ValueError):  # a socket closed under us
            return False


def fd_readable(fd: int) -> bool:
    """Whether reading ``fd`` would not block (data, end of file or an error waits). poll, not
    select: a web process with hundreds of sockets hands out descriptors past select's limit of
    1,024, where select raises."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)  # a hang-up or an error is reported whether asked or not
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])
