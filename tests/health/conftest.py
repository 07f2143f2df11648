"""Real components for the health checks: SeaweedFS as S3, DCMTK storescp, plain HTTP servers,
a socket that never answers, and a site copy whose keys tests can change."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from seaweed import S3Server, free_port, start_weed, stop
from support import dcmtk, edit_yaml

VENV_BIN = Path(sys.executable).parent




@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    return free_port()


def wait_port(port: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False




@pytest.fixture
def site_copy(repo_copy: Path) -> Callable[[Callable[[Any], None]], Path]:
    """edit(fn): apply fn to the round-trip YAML of the copied site.yml and return its path."""
    path = repo_copy / "stack" / "site.yml"

    def edit(fn: Callable[[Any], None]) -> Path:
        return edit_yaml(path, fn)

    return edit


@pytest.fixture(scope="session")
def weed_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real SeaweedFS S3 API on 127.0.0.1 with one identity (the indexer's keys)."""
    with start_weed(tmp_path_factory.mktemp("weed")) as server:
        yield server


class _HtmlHandler(http.server.BaseHTTPRequestHandler):
    body = b"<!DOCTYPE html><html><head><title>MinIO Console</title></head><body>console</body></html>"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def html_server() -> Iterator[str]:
    """A plain web server answering 200 with an HTML page to everything (like a storage console)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HtmlHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hung_endpoint() -> Iterator[str]:
    """A socket that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    accepted: list[socket.socket] = []
    stopping = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stopping.is_set():
            try:
                conn, _ = sock.accept()
                accepted.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stopping.set()
        thread.join(timeout=2)
        for conn in accepted:
            conn.close()
        sock.close()


@dataclass(frozen=True)
class DicomServer:
    port: int
    ae_title: str


@pytest.fixture(scope="session")
def storescp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DicomServer]:
    """DCMTK's storescp on 127.0.0.1, accepting C-ECHO for the site's AE title."""
    exe = dcmtk("storescp")
    assert exe is not None
    out = tmp_path_factory.mktemp("storescp")
    port = free_port()
    proc = subprocess.Popen([exe, "--aetitle", "BIDSFLUX", "--output-directory", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_port(port), "storescp did not start listening"
        yield DicomServer(port, "BIDSFLUX")
    finally:
        stop(proc)
