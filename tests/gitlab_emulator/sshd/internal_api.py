"""GitLab's internal API as gitlab-shell calls it, over the emulator's Unix socket."""

import http.client
import json
import os
import socket
from urllib.parse import urlencode

SOCKET = os.environ.get("EMULATOR_SOCKET", "/sock/emulator.sock")
SECRET = open(os.environ.get("GITLAB_SHELL_SECRET_FILE", "/sock/gitlab_shell_secret")).read().strip()


class _Conn(http.client.HTTPConnection):
    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(SOCKET)


def call(method: str, path: str, params: dict) -> tuple[int, dict]:
    conn = _Conn("localhost")
    # gitlab-shell authenticates to /api/v4/internal with the shared secret (see the emulator's keys.py).
    params = {**params, "secret_token": SECRET}
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if method == "GET":
        conn.request(method, f"/api/v4/internal/{path}?{urlencode(params)}", headers=headers)
    else:
        conn.request(method, f"/api/v4/internal/{path}", body=urlencode(params), headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    return resp.status, (json.loads(body) if body else {})
