"""Stand-in for upstream's /indexer/index_dicom.py (UNFmontreal/containers), from its contract in
/work/notes/indexer-facts.md 1.3-1.6 (not copied). It does what the real one does on the wire:
- reads GITLAB_TOKEN / GITLAB_BOT_USERNAME / GITLAB_BOT_EMAIL (missing -> RuntimeError);
- sets git user.name/email and annex.security.allowed-ip-addresses to the S3 host's address;
- archives the study folder with 7z into a fresh annex repository and annexes it;
- session metadata from the first DICOM file, StudyDescriptionPath = StudyDescription split at /
  (after ^ -> /);
- S3 special remote named after the S3 host with upstream's exact parameters (https, port 443,
  path style, chunk=1GiB, bucket = first path part, fileprefix = rest + StudyInstanceUID/), only
  archives wanted there, content copied;
- python-gitlab over HTTPS: groups and the project <group>/sourcedata/dicoms/<StudyInstanceUID>,
  then a git push over SSH to the project's ssh_url_to_repo (branches main and git-annex).
Not reproduced (no effect on the data path the canary checks): the study and bids repositories,
the extracted DICOM files, bot membership."""

import argparse
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import urllib.parse

import gitlab
import pydicom

S3_REMOTE_DEFAULT_PARAMETERS = ["type=S3", "encryption=none", "autoenable=true", "port=443", "protocol=https",
                                "chunk=1GiB", "requeststyle=path"]
META_KEYS = ["StudyInstanceUID", "PatientID", "PatientName", "ReferringPhysicianName", "StudyDate", "StudyDescription"]


def run(*cmd: str, cwd: str | None = None) -> str:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("input")
    p.add_argument("--gitlab-url", default=os.environ.get("GITLAB_SERVER"))
    p.add_argument("--gitlab-group-template", default="{ReferringPhysicianName}/{StudyDescription}")
    p.add_argument("--session-name-tag", default="PatientName")
    p.add_argument("--storage-remote")
    p.add_argument("--sort-series", action="store_true", default=True)
    p.add_argument("--fake-dates", action="store_true")
    p.add_argument("--p7z-opts", default="-mx5 -ms=off")
    return p.parse_args()


def metas_of(folder: pathlib.Path) -> dict:
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - upstream skips what pydicom cannot read
                continue
            metas = {k: str(getattr(ds, k)).replace("^", "/") for k in META_KEYS}
            metas["StudyDescriptionPath"] = metas["StudyDescription"].split("/")
            return metas
    raise RuntimeError(f"no DICOM file in {folder}")


def group(gl: gitlab.Gitlab, path: str):  # type: ignore[no-untyped-def]
    parent = None
    parts = path.split("/")
    for i in range(len(parts)):
        full = "/".join(parts[: i + 1])
        try:
            parent = gl.groups.get(full)
        except gitlab.exceptions.GitlabGetError:
            data = {"name": parts[i], "path": parts[i]}
            if parent is not None:
                data["parent_id"] = parent.id
            parent = gl.groups.create(data)
    return parent


def main() -> None:
    args = parse()
    for var in ("GITLAB_TOKEN", "GITLAB_BOT_USERNAME"):
        if not os.environ.get(var):
            raise RuntimeError(f"missing {var} env var")
    s3 = urllib.parse.urlparse(args.storage_remote)
    run("git", "config", "--global", "user.name", os.environ["GITLAB_BOT_USERNAME"])
    run("git", "config", "--global", "user.email", os.environ.get("GITLAB_BOT_EMAIL", ""))
    run("git", "config", "--global", "annex.security.allowed-ip-addresses", socket.gethostbyname(s3.hostname))

    study = pathlib.Path(args.input).resolve()
    metas = metas_of(study)
    with tempfile.TemporaryDirectory() as tmp:
        run("git", "init", "-q", tmp)
        run("git", "annex", "init", "-q", cwd=tmp)
        run("7z", "u", f"{study.name}.7z", str(study), *args.p7z_opts.split(), cwd=tmp)
        run("git", "annex", "add", f"{study.name}.7z", cwd=tmp)
        run("git", "commit", "-q", "-m", "add dicoms archive", cwd=tmp)

        # export_to_s3
        path = s3.path.format(**metas) if "{" in s3.path else s3.path
        _, bucket, *prefix = pathlib.Path(path).parts
        prefix.append(metas["StudyInstanceUID"] + "/")
        run("git", "annex", "initremote", s3.hostname, *S3_REMOTE_DEFAULT_PARAMETERS,
            f"host={s3.hostname}", f"bucket={bucket}", f"fileprefix={'/'.join(prefix)}", cwd=tmp)
        run("git", "annex", "wanted", s3.hostname, "include=*7z or include=*.tar.gz or include=*zip", cwd=tmp)
        run("git", "annex", "copy", "--auto", "--to", s3.hostname, cwd=tmp)

        # setup_gitlab_repos (session project only)
        gl = gitlab.Gitlab(args.gitlab_url, private_token=os.environ["GITLAB_TOKEN"])
        gl.auth()
        group_path = args.gitlab_group_template.format(**metas)
        parent = group(gl, f"{group_path}/sourcedata/dicoms")
        full = f"{group_path}/sourcedata/dicoms/{metas['StudyInstanceUID']}"
        try:
            project = gl.projects.get(full)
        except gitlab.exceptions.GitlabGetError:
            project = gl.projects.create({"name": metas["StudyInstanceUID"], "namespace_id": parent.id})
        run("git", "remote", "add", "origin", project.ssh_url_to_repo, cwd=tmp)
        run("git", "push", "-q", "origin", "main", "git-annex", cwd=tmp)
    print(f"indexed {study} into {full}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        print(f"failed: {exc.cmd}: {exc.stderr}", file=sys.stderr, flush=True)
        sys.exit(1)
