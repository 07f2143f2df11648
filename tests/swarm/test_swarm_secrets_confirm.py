"""`secrets gc` on a terminal lists the versions it would remove and asks; "no" removes nothing (issue 19)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from bidsflux.swarm.secretstore import secret_labels
from support import REPO_ROOT, copy_repository


@pytest.mark.integration
def test_secrets_gc_asks_on_a_terminal_and_no_removes_nothing(docker_client: Any, tmp_path: Path) -> None:
    import pty
    import select

    stack = "bfux" + uuid.uuid4().hex[:8]
    root = copy_repository(tmp_path / "repo")
    site = root / "stack/site.yml"
    site.write_text(re.sub(r"(?m)^(\s+name:\s*)bidsflux$", rf"\g<1>{stack}", site.read_text(), count=1))
    created = [docker_client.secrets.create(name=f"{stack}_s3_secret_v{v}", data=b"x" * 8,
                                            labels=secret_labels(stack, "s3_secret", v)) for v in (1, 2)]
    try:
        master, slave = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "bidsflux", "secrets", "gc", "--root", str(root)],
                                stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                                env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "scripts"), "CI": "", "GITLAB_CI": ""})
        os.close(slave)
        seen, deadline = b"", time.monotonic() + 60
        while b"Continue?" not in seen and time.monotonic() < deadline and proc.poll() is None:
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 4096)
        os.write(master, b"n\n")
        code = proc.wait(timeout=30)
        try:
            while select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 4096)
        except OSError:
            pass
        os.close(master)
        out = seen.decode(errors="replace")
        assert f"remove {stack}_s3_secret_v1" in out and "Continue?" in out, out
        assert code == 1 and "stopped at your request" in out
        names = {s.name for s in docker_client.secrets.list(filters={"label": f"io.bidsflux.stack={stack}"})}
        assert names == {f"{stack}_s3_secret_v1", f"{stack}_s3_secret_v2"}
    finally:
        for s in docker_client.secrets.list(filters={"label": f"io.bidsflux.stack={stack}"}):
            s.remove()
        assert created
