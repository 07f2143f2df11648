"""A real git server for tests: `git http-backend` (smart HTTP) over bare repositories on 127.0.0.1.

Stands for GitHub (the upstream of imported projects): anonymous clone, no push."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org"}


class GitServer:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="git-upstream-"))
        root = self.root

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._cgi("GET")

            def do_POST(self) -> None:
                self._cgi("POST")

            def _cgi(self, method: str) -> None:
                split = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                env = {**os.environ, "GIT_PROJECT_ROOT": str(root), "GIT_HTTP_EXPORT_ALL": "1",
                       "PATH_INFO": split.path, "REQUEST_METHOD": method, "QUERY_STRING": split.query,
                       "CONTENT_TYPE": self.headers.get("Content-Type") or "", "CONTENT_LENGTH": str(len(body)),
                       "REMOTE_ADDR": "127.0.0.1", "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol") or ""}
                if self.headers.get("Content-Encoding"):
                    env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
                out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                status, headers = 200, {}
                for line in head.decode(errors="replace").split("\r\n"):
                    k, _, v = line.partition(":")
                    if k.lower() == "status":
                        status = int(v.strip().split()[0])
                    elif k:
                        headers[k.strip()] = v.strip()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add_repo(self, path: str, files: dict[str, str] | None = None, tag: str | None = None) -> str:
        """A bare repository at <url>/<path> with one commit on main; returns its commit."""
        bare = self.root / path
        work = Path(tempfile.mkdtemp(prefix="git-work-"))
        env = {**os.environ, **GIT_ENV}
        subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
        for name, text in (files or {"README.md": f"# {path}\n"}).items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_text(text)
        subprocess.run(["git", "-C", str(work), "add", "-A"], check=True, env=env)
        subprocess.run(["git", "-C", str(work), "commit", "-qm", "init"], check=True, env=env)
        if tag:
            subprocess.run(["git", "-C", str(work), "tag", tag], check=True, env=env)
        bare.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
        head = subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], check=True, capture_output=True,
                              text=True).stdout.strip()
        shutil.rmtree(work, ignore_errors=True)
        return head

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.root, ignore_errors=True)


def point_imports_at(root: Path, upstream_url: str) -> None:
    """gitlab.yml's mirror_from URLs on github.com -> the same paths on the test's git server."""
    gl = root / "stack" / "gitlab.yml"
    gl.write_text(gl.read_text().replace("https://github.com/", f"{upstream_url}/"))
