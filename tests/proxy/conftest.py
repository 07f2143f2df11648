"""Stand-in backends (plain HTTP on 127.0.0.1) and a site copy for the proxy tests."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support import edit_yaml


class _Echo(http.server.BaseHTTPRequestHandler):
    name = "backend"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = json.dumps({"backend": self.name, "host": self.headers.get("Host"),
                           "proto": self.headers.get("X-Forwarded-Proto"), "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def backends() -> Iterator[Callable[[str], str]]:
    """start(name) -> "127.0.0.1:port" of an HTTP server that answers with its name and the
    headers the proxy forwarded."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(name: str) -> str:
        handler = type(f"Echo_{name}", (_Echo,), {"name": name})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.fixture
def site_file(repo_copy: Path) -> Callable[[Callable[[Any], None]], Path]:
    """edit(fn): apply fn to the copied site.yml (round trip) and return its path."""
    path = repo_copy / "stack" / "site.yml"

    def edit(fn: Callable[[Any], None]) -> Path:
        return edit_yaml(path, fn)

    return edit
