"""The values file has one writer under a lock: concurrent processes (mercure up, rotations, token
stores) lose no value and agree on generated ones; files mirroring a value (module secrets) follow
its changes atomically, so a reader never sees a half-written file."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from bidsflux.swarm import secretstore

WRITER = """
import sys
from bidsflux.swarm import secretstore
path, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    secretstore.write_values_file(path, {f"{who}_{i}": f"value with space '{who}' {i}"})
"""

ENSURER = """
import secrets, sys
from bidsflux.swarm import secretstore
vals = secretstore.ensure_values(sys.argv[1], {"SHARED": lambda: secrets.token_hex(8), sys.argv[2]: lambda: "mine"})
print(vals["SHARED"])
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(secretstore.__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state" / "secrets.env"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"w{j}", "25"], env=_env()) for j in range(4)]
    assert [p.wait(60) for p in procs] == [0] * 4
    values = secretstore.read_values_file(path)
    assert len(values) == 100
    assert values["w3_24"] == "value with space 'w3' 24"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_concurrent_ensure_values_agree_on_one_generated_value(tmp_path: Path) -> None:
    path = tmp_path / "secrets.env"
    procs = [subprocess.Popen([sys.executable, "-c", ENSURER, str(path), f"K{j}"], env=_env(), stdout=subprocess.PIPE,
                              text=True) for j in range(6)]
    outs = [p.communicate(60)[0].strip() for p in procs]
    assert len(set(outs)) == 1 and outs[0]
    values = secretstore.read_values_file(path)
    assert values["SHARED"] == outs[0] and all(values[f"K{j}"] == "mine" for j in range(6))


def test_old_unquoted_lines_are_read_and_rewritten_quoted(tmp_path: Path) -> None:
    # What `mercure up` appended before it used the store.
    path = tmp_path / "secrets.env"
    path.write_text("# old\nMERCURE_WEB_USER=bidsflux_admin\nMERCURE_DB_PASSWORD=Ab-c_d\n")
    secretstore.write_values_file(path, {"s3_id": "X Y"})
    assert secretstore.read_values_file(path) == {"MERCURE_WEB_USER": "bidsflux_admin", "MERCURE_DB_PASSWORD": "Ab-c_d",
                                                  "s3_id": "X Y"}
    assert "s3_id='X Y'" in path.read_text()


READER = """
import sys, time
path, n = sys.argv[1], int(sys.argv[2])
a, b = "a" * n, "b" * n
seen = set()
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    try:
        text = open(path).read()
    except FileNotFoundError:
        continue
    if text not in (a, b):
        print("PARTIAL", len(text)); sys.exit(1)
    seen.add(text[:1])
print("".join(sorted(seen)))
"""


def test_mirror_files_follow_rotations_atomically(tmp_path: Path) -> None:
    values = tmp_path / "state" / "secrets.env"
    mirror = tmp_path / "state" / "mercure-secrets" / "s3_secret"
    mirror.parent.mkdir(parents=True)
    assert secretstore.add_mirror(values, mirror, "s3_secret", (os.getuid(), os.getgid()), 0o400) is False
    assert not mirror.exists()  # nothing to mirror yet
    a, b = "a" * 20_000, "b" * 20_000  # large enough that a non-atomic write could be caught half-way
    secretstore.write_values_file(values, {"s3_secret": a})
    assert mirror.read_text() == a and stat.S_IMODE(mirror.stat().st_mode) == 0o400
    reader = subprocess.Popen([sys.executable, "-c", READER, str(mirror), str(len(a)), "3"], stdout=subprocess.PIPE, text=True)
    for i in range(40):
        secretstore.write_values_file(values, {"s3_secret": b if i % 2 == 0 else a})
    out = reader.communicate(30)[0].strip()
    assert reader.returncode == 0, out
    assert mirror.read_text() == a
    assert [p.name for p in mirror.parent.iterdir()] == ["s3_secret"]  # no temporary files left
    # Other keys leave the file alone (same inode).
    inode = mirror.stat().st_ino
    secretstore.write_values_file(values, {"other": "x"})
    assert mirror.stat().st_ino == inode
