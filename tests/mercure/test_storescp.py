"""storescp by a switch, against Debian's real dcmtk: the rendered dicom_endpoint command receives a
multi-series study, runs the end-of-study command exactly once with the study folder, and answers
C-ECHO; a closed port gives a clear failure."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mercure_testlib import edit, free_port, synthetic_study
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from bidsflux.health.dicom import c_echo
from bidsflux.site.render import indexer_command
from bidsflux.site.repository import open_repository
from bidsflux.swarm.stackfile import load_and_render
from support import dcmtk

pytestmark = pytest.mark.integration
AE_TITLE = "BIDSFLUX"


def rendered_endpoint(repo: Path, port: int, timeout: int) -> tuple[list[str], str]:
    site = repo / "stack" / "site.yml"
    edit(site, "  kind: mercure", "  kind: storescp")
    edit(site, "  study_timeout: 60", f"  study_timeout: {timeout}")
    edit(site, "  dicom: 11112", f"  dicom: {port}")
    rendered, site_doc = load_and_render(open_repository(root=repo), "initial")
    return rendered.data["services"]["dicom_endpoint"]["command"], indexer_command(site_doc.data)


@pytest.fixture
def storescp(repo: Path, tmp_path: Path) -> Iterator[tuple[int, Path, Path, list[str]]]:
    exe = dcmtk("storescp")
    port = free_port()
    command, indexer = rendered_endpoint(repo, port, timeout=2)
    incoming, record = tmp_path / "incoming", tmp_path / "fired.log"
    incoming.mkdir()
    recorder = tmp_path / "record.sh"
    recorder.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> {record}\n')
    recorder.chmod(0o755)
    # Exactly the rendered arguments; only the indexer becomes a recorder and the container's
    # /data/incoming a temporary folder.
    assert indexer in command and "/data/incoming" in command
    args = [f"{recorder} #p" if a == indexer else str(incoming) if a == "/data/incoming" else a for a in command]
    args[0] = exe  # the rendered `storescp`, as DCMTK's binary
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not c_echo("127.0.0.1", port, AE_TITLE, timeout=1).ok:
            assert proc.poll() is None, f"storescp exited: {proc.stdout.read().decode() if proc.stdout else ''}"
            assert time.monotonic() < deadline, "storescp did not start listening"
            time.sleep(0.2)
        yield port, incoming, record, args
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_rendered_command_carries_the_indexer_options(repo: Path) -> None:
    command, indexer = rendered_endpoint(repo, 11112, timeout=60)
    assert command[0] == "storescp" and command[-1] == "11112"
    assert command[command.index("--eostudy-timeout") + 1] == "60"
    assert command[command.index("--aetitle") + 1] == AE_TITLE
    exec_cmd = command[command.index("--exec-on-eostudy") + 1]
    for option in ("--gitlab-url", "--storage-remote", "--gitlab-group-template", "--session-name-tag"):
        assert option in exec_cmd
    assert exec_cmd.endswith("$${IFS}#p") and " " not in exec_cmd  # one word through the entrypoint's unquoted $@


def test_study_completes_once_with_its_folder_and_echo_works(storescp) -> None:  # type: ignore[no-untyped-def]
    port, incoming, record, args = storescp
    assert c_echo("127.0.0.1", port, AE_TITLE).ok

    study = synthetic_study({"MRSI": 3, "STAGE_preproc": 2, "T1w": 2})
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        statuses = [assoc.send_c_store(ds).Status for ds in study]
    finally:
        assoc.release()
    assert statuses == [0] * len(study)

    timeout = int(args[args.index("--eostudy-timeout") + 1])
    deadline = time.monotonic() + timeout + 10
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert record.exists(), "the end-of-study command never ran"
    time.sleep(timeout + 1)  # a second firing would come within another timeout
    fired = record.read_text().splitlines()
    assert len(fired) == 1, f"end-of-study command ran {len(fired)} times: {fired}"
    folder = Path(fired[0])
    assert folder.parent == incoming and folder.is_dir()
    assert len([p for p in folder.iterdir() if p.is_file()]) == len(study)


def test_echo_on_a_closed_port_fails_clearly() -> None:
    port = free_port()  # bound then released: nothing listens there
    result = c_echo("127.0.0.1", port, AE_TITLE, timeout=2)
    assert not result.ok and result.status == "unreachable"
    assert f"127.0.0.1:{port}" in result.reason and "refused" in result.reason.lower()
    assert result.elapsed < 2
