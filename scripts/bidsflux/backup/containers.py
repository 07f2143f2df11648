"""Commands and files inside a running container (docker-py): what GitLab's and Mercure's parts use."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

from bidsflux.diagnostics import UserError


def exec_ok(container: Any, cmd: list[str], what: str, stream_to: Path | None = None) -> str:
    """Run `cmd` in `container`; with `stream_to`, its stdout goes to that file (dumps can be large)."""
    from docker.errors import DockerException

    try:
        if stream_to is None:
            code, output = container.exec_run(cmd, demux=False)
            text = (output or b"").decode(errors="replace")
        else:
            exec_id = container.client.api.exec_create(container.id, cmd, stdout=True, stderr=True)["Id"]
            err = b""
            with stream_to.open("wb") as fh:
                for out, errchunk in container.client.api.exec_start(exec_id, stream=True, demux=True):
                    if out:
                        fh.write(out)
                    if errchunk:
                        err += errchunk
            code = container.client.api.exec_inspect(exec_id)["ExitCode"]
            text = err.decode(errors="replace")
    except DockerException as exc:
        raise UserError(f"{what}: cannot run {cmd[0]} in {container.name}: {str(exc)[:200]}") from None
    if code != 0:
        last = text.strip().splitlines()[-1] if text.strip() else f"exit {code}"
        raise UserError(f"{what}: `{' '.join(cmd[:3])}` failed in {container.name}: {last[:300]}")
    return text


def copy_out(container: Any, path: str, dest: Path) -> None:
    """One file of the container to `dest` (docker's archive API streams a tar)."""
    from docker.errors import DockerException

    try:
        stream, _ = container.get_archive(path)
        buf = io.BytesIO(b"".join(stream))
    except DockerException as exc:
        raise UserError(f"cannot copy {path} out of {container.name}: {str(exc)[:200]}") from None
    with tarfile.open(fileobj=buf) as tar:
        member = next((m for m in tar.getmembers() if m.isfile()), None)
        if member is None:
            raise UserError(f"{path} in {container.name} is not a file")
        src = tar.extractfile(member)
        assert src is not None
        dest.parent.mkdir(parents=True, exist_ok=True)
        with dest.open("wb") as fh:
            while chunk := src.read(1 << 20):
                fh.write(chunk)


def copy_in(container: Any, src: Path, folder: str, name: str, uid: int = 0, gid: int = 0, mode: int = 0o600) -> None:
    """`src` into `folder` of the container as `name`, with the owner and mode the service expects."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tar.gettarinfo(str(src), arcname=name)
        info.uid, info.gid, info.mode, info.uname, info.gname = uid, gid, mode, "", ""
        with src.open("rb") as fh:
            tar.addfile(info, fh)
    if not container.put_archive(folder, buf.getvalue()):
        raise UserError(f"cannot copy {src.name} into {container.name}:{folder}")


def compose_container(client: Any, project: str, service: str) -> Any:
    found = client.containers.list(filters={"label": [f"com.docker.compose.project={project}",
                                                      f"com.docker.compose.service={service}"]})
    if not found:
        raise UserError(f"no running container of compose service {project}/{service} on this host; "
                        "run this where Mercure runs (`bidsflux mercure up`)")
    return found[0]
