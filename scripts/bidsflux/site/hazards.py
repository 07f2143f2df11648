"""Values that parse but would do harm: indexer templates and the S3 URL the dicom_indexer formats,
host folders bidsflux creates and chowns, the secrets file, and credentials written in plain text."""

from __future__ import annotations

import posixpath
import re
import string
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from bidsflux.diagnostics import Diagnostic
from bidsflux.site.credentials import check_mapping
from bidsflux.site.indexer import contract_problems
from bidsflux.site.yamlsource import Document

# What the dicom_indexer puts into its templates (see DESIGN.md).
INDEXER_PLACEHOLDERS = frozenset({
    "ReferringPhysicianName", "StudyDescription", "StudyDescriptionPath",
    "PatientID", "PatientName", "StudyDate", "StudyInstanceUID",
})
_INDEX = re.compile(r"^\[[0-9]{1,2}\]$")
_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")

# Folders of the operating system: bidsflux creates, chowns and chmods the folders in paths, and
# services bind-mount them.
SYSTEM_FOLDERS = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media", "/mnt",
    "/opt", "/proc", "/root", "/run", "/sbin", "/snap", "/srv", "/sys", "/tmp", "/usr", "/usr/local", "/var",
    "/var/cache", "/var/lib", "/var/log", "/var/mail", "/var/opt", "/var/run", "/var/spool", "/var/tmp",
})
# Trees nothing of bidsflux belongs in (system files, kernel interfaces, Docker's own state).
SYSTEM_TREES = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin", "/sys",
    "/usr/bin", "/usr/include", "/usr/lib", "/usr/libexec", "/usr/sbin", "/usr/share", "/var/run",
    "/var/lib/docker", "/var/lib/containerd",
)
# World-writable, emptied at boot: anyone may create the file first or replace it.
TEMP_FOLDERS = ("/tmp", "/var/tmp", "/dev/shm")


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


# ---- indexer templates and the storage remote -------------------------------------------------

def template_problems(text: str) -> list[str]:
    """Why a dicom_indexer template (a Python format string over DICOM metadata) is unsafe or
    wrong: the indexer calls str.format, so attributes, conversions and format specs in a
    placeholder would reach Python objects or allocate without bound."""
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        return [f"bad placeholder syntax: {exc}"]
    out = []
    allowed = ", ".join(sorted(INDEXER_PLACEHOLDERS))
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        name = re.split(r"[.\[]", field, maxsplit=1)[0]
        rest = field[len(name):]
        if name not in INDEXER_PLACEHOLDERS:
            out.append(f"placeholder {shown} is not DICOM metadata the indexer provides ({allowed})")
        elif rest and not _INDEX.match(rest):
            out.append(f"placeholder {shown} reaches into the value; write {{{name}}} or an index such as {{{name}[1]}}")
        elif conversion or spec:
            out.append(f"placeholder {shown} has a conversion or format; write {{{name}}}")
        elif field == "StudyDescriptionPath":
            out.append("{StudyDescriptionPath} is a list (StudyDescription split at ^): "
                       "pick a part, for example {StudyDescriptionPath[1]}")
    return out


def storage_remote_problems(text: str, console_host: str, console_port: int) -> list[str]:
    """Why the S3 URL pattern would fail in the indexer or send data astray."""
    if any(ch.isspace() or ord(ch) < 32 for ch in text):
        return ["contains whitespace or control characters"]
    if "{" in text.split("//", 1)[-1].split("/", 1)[0]:
        return ["the host and port cannot come from DICOM metadata; put placeholders after the first /"]
    sample = re.sub(r"\{[^{}]*\}", "x", text)
    try:
        url = urlsplit(sample)
        port = url.port
    except ValueError as exc:
        return [f"not a valid S3 URL: {exc}"]
    if url.username is not None or url.password is not None:
        return ["has credentials in it; the indexer reads its S3 keys from the s3_id and s3_secret secrets"]
    if not url.hostname or not _HOST.match(url.hostname):
        return [f"{url.hostname or 'no host'!r} is not a host name"]
    if port is not None and not 1 <= port <= 65535:
        return [f"port {port} is not between 1 and 65535"]
    if url.hostname == console_host or port == console_port:
        return ["points at the S3 console, not the S3 API: uploads would be silently lost; use hosts.s3 and ports.s3_api"]
    return []


def indexer_checks(site: Document, out: list[Diagnostic]) -> None:
    data = site.data
    for key in ("storage_remote", "gitlab_group_template"):
        out += [site.diagnostic(["indexer", key], p) for p in template_problems(data["indexer"][key])]
    problems = storage_remote_problems(data["indexer"]["storage_remote"], data["hosts"]["s3_console"], data["ports"]["s3_console"])
    out += [site.diagnostic(["indexer", "storage_remote"], p) for p in problems]
    if not problems:  # the URL parses: what upstream's indexer makes of it
        out += [site.diagnostic(path, message) for path, message in contract_problems(data)]


# ---- host folders and the secrets file --------------------------------------------------------

def _folders(paths: dict[str, Any]) -> Iterator[tuple[list[object], dict[str, Any]]]:
    for key, entry in paths.items():
        if isinstance(entry, list):
            yield from ((["paths", key, i], e) for i, e in enumerate(entry) if isinstance(e, dict))
        elif isinstance(entry, dict):
            yield ["paths", key], entry


def path_problem(path: str, what: str) -> str | None:
    """Why `path` is no place for `what` (a folder bidsflux creates and chowns, or the secrets file)."""
    segments = path.split("/")
    if ".." in segments:
        return "contains '..': write the folder it means, without '..'"
    plain = posixpath.normpath(re.sub("/+", "/", path))
    if plain != path:
        return f"write the path in its plain form: {plain}"
    if plain in SYSTEM_FOLDERS:
        return f"{plain} is a system folder; give {what} its own folder (for example /srv/bidsflux/...)"
    for tree in SYSTEM_TREES:
        if _under(plain, tree):
            return f"is inside {tree}, which belongs to the system; give {what} its own folder"
    return None


def path_checks(site: Document, out: list[Diagnostic]) -> None:
    folders = list(_folders(site.data["paths"]))
    for where, entry in folders:
        problem = path_problem(entry["path"], "bidsflux's data")
        if problem:
            out.append(site.diagnostic([*where, "path"], problem))
        mode = entry.get("mode")
        if isinstance(mode, str) and int(mode, 8) & 0o002:
            out.append(site.diagnostic([*where, "mode"], f"{mode} lets every user write here; drop the world-write bit (0755, 0750)"))
    for i, (where, entry) in enumerate(folders):
        for other_where, other in folders[i + 1:]:
            a, b = entry["path"].rstrip("/"), other["path"].rstrip("/")
            if _under(a, b) or _under(b, a):
                shown = ".".join(map(str, other_where))
                out.append(site.diagnostic([*where, "path"], f"overlaps {shown} ({other['path']}): each service needs its own folder (owners and modes differ)"))
    _secrets_file_check(site, folders, out)


def _secrets_file_check(site: Document, folders: list[tuple[list[object], dict[str, Any]]], out: list[Diagnostic]) -> None:
    file = site.data["secrets"]["file"]
    where = ["secrets", "file"]
    problem = path_problem(file, "the secrets file")
    if problem is None and file.endswith("/"):
        problem = "names a folder; name the file (for example /var/lib/bidsflux/secrets.env)"
    if problem is None:
        parent = posixpath.dirname(file)
        if parent in TEMP_FOLDERS:
            problem = f"is directly in {parent}, where any user can create or replace it and which is emptied at boot"
    if problem is None:
        for folder_where, entry in folders:
            if folder_where[:2] != ["paths", "state_dir"] and _under(file, entry["path"]):
                shown = ".".join(map(str, folder_where))
                problem = (f"is inside {shown} ({entry['path']}), a folder a service mounts and bidsflux chowns to "
                           "it; keep the secrets file in paths.state_dir")
                break
    if problem:
        out.append(site.diagnostic(where, problem))


# ---- credentials in plain text ----------------------------------------------------------------

def template_credential_checks(template: Document, out: list[Diagnostic]) -> None:
    for name, spec in (template.data.get("services") or {}).items():
        env = spec.get("environment") if isinstance(spec, dict) else None
        if isinstance(env, dict):
            out += check_mapping(template, ["services", name, "environment"], env,
                                 "the stack file is in git; use a docker secret (x-bidsflux-secrets) and a *_FILE variable")


def gitlab_credential_checks(gitlab: Document, out: list[Diagnostic]) -> None:
    for name, var in (gitlab.data.get("variables") or {}).items():
        if isinstance(var, dict) and "value" in var:
            out += [gitlab.diagnostic(["variables", name, "value"], d.message)
                    for d in check_mapping(gitlab, ["variables", name], {name: var["value"]},
                                           "a literal value is in git; use secret: with a logical secret instead")]
