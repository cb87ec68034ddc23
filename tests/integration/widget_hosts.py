"""What the widget's browser tests put around the app: a customer's site on an origin of its own (a
static page with the embed tag, served with a strict Content-Security-Policy), and a TCP proxy in
front of the app that a test can cut and restore, as a dropped network would."""

from __future__ import annotations

import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HOST_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Partner shop</title>
  <link rel="stylesheet" href="host.css">
</head>
<body>
  <main>
    <h1>Partner shop</h1>
    <p>A customer's own site, on another origin, with the chat widget's tag.</p>
    <button type="button" id="help">Help</button>
  </main>
  <script src="host.js"></script>
  <script src="{app}widget.js" data-site="{key}" async></script>
</body>
</html>
"""

# Rules a host site might have that would break an unshielded widget.
HOST_CSS = """body { font: 18px Georgia, serif; color: #222; margin: 2rem; }
button { background: hotpink; color: #000; border: 3px dotted #000; padding: 2rem; }
div, p { letter-spacing: .3em; }
"""

# The host page's own script: records the widget's events and opens it from its own Help button.
HOST_JS = """window.recorded = [];
window.addEventListener("supportchat:unavailable", function () { window.recorded.push({type: "unavailable"}); });
window.addEventListener("supportchat:ready", function () {
  window.recorded.push({type: "ready", detail: {language: window.SupportChat.language}});
  ["open", "close", "message", "handoff"].forEach(function (type) {
    window.SupportChat.addEventListener(type, function (event) {
      window.recorded.push({type: type, detail: event.detail});
    });
  });
});
document.getElementById("help").addEventListener("click", function () { window.SupportChat.open(); });
"""


class HostSite:
    """A static site on the ``localhost`` name and a port of its own (so a different origin from the
    app's 127.0.0.1). Its page, written by :meth:`embed`, carries the widget's tag and is served under
    a CSP that allows scripts and connections only from itself and the app, and no inline script or
    style."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.policy = "default-src 'none'"
        site = self

        class Handler(SimpleHTTPRequestHandler):
            def end_headers(self):
                self.send_header("Content-Security-Policy", site.policy)
                self.send_header("Cache-Control", "no-store")
                super().end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://localhost:{self.server.server_address[1]}/"
        self.origin = self.url.rstrip("/")
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def embed(self, *, app_url: str, key: str) -> HostSite:
        (self.root / "index.html").write_text(HOST_PAGE.format(app=app_url, key=key))
        (self.root / "host.css").write_text(HOST_CSS)
        (self.root / "host.js").write_text(HOST_JS)
        app = app_url.rstrip("/")
        self.policy = (
            f"default-src 'none'; script-src 'self' {app}; style-src 'self'; "
            f"connect-src {app} {app.replace('http://', 'ws://')}; img-src 'self'"
        )
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target_port``. ``cut()`` resets every open connection and refuses
    new ones (closes them at once) until ``restore()``."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.up = threading.Event()
        self.up.set()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _address = self.listener.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.up.clear()
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def restore(self) -> None:
        self.up.set()

    def stop(self) -> None:
        self.cut()
        self.listener.close()
