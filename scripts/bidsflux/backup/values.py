"""The values file, encrypted with age to recipients whose keys are not on the server."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bidsflux.diagnostics import UserError


def _age(tool: str = "age") -> str:
    found = shutil.which(tool)
    if not found:
        raise UserError(f"{tool} is not installed (apt-get install age); the ops image carries it")
    return found


def encrypt(values_file: Path, recipients: tuple[str, ...], out: Path) -> None:
    """age-encrypt `values_file` to every recipient; the plaintext never touches the target."""
    if not recipients:
        raise UserError("backup.encrypt_to lists no age recipient: the values file is never stored unencrypted")
    args = [_age(), "--encrypt", "--output", str(out)]
    for r in recipients:
        args += ["--recipient", r]
    try:
        data = values_file.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the values file {values_file}: {exc.strerror or exc}") from None
    done = subprocess.run([*args, "-"], input=data, capture_output=True, timeout=60)
    if done.returncode != 0:
        raise UserError(f"age refused to encrypt: {done.stderr.decode(errors='replace').strip()[:300]}")


def decrypt(encrypted: Path, identity: Path, out: Path) -> None:
    """Decrypt with the identity file brought to the host for the restore; `out` is root-only."""
    done = subprocess.run([_age(), "--decrypt", "--identity", str(identity), str(encrypted)],
                          capture_output=True, timeout=60)
    if done.returncode != 0:
        raise UserError(f"cannot decrypt {encrypted.name} with {identity}: "
                        f"{done.stderr.decode(errors='replace').strip()[:300]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".restoring")
    tmp.touch(mode=0o600)
    tmp.write_bytes(done.stdout)
    tmp.replace(out)
