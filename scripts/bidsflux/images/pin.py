"""`bidsflux images pin`: resolve a built tag to the digest the registry stored and write it into
site.yml's `images` as name:tag@sha256:..., for every key naming the same image (storescp runs the
dicom_indexer image), so the stack and Mercure run exactly what was built.

site.yml is edited in place on the value's own line (found with ruamel's positions): comments,
order and every other byte stay as they were, so the change is one reviewable line per key."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bidsflux.diagnostics import UserError
from bidsflux.images.registry import Credentials, ImageRef, Registry, parse


@dataclass
class Pin:
    key: str
    before: str
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


def same_image_keys(images: Mapping[str, Any], key: str) -> list[str]:
    """`key` and every other images key naming the same repository (any tag or digest)."""
    if key not in images:
        raise UserError(f"site.yml has no images.{key}")
    name = parse(str(images[key])).name
    out = [key]
    for other, ref in images.items():
        if other != key and isinstance(ref, str):
            try:
                if parse(ref).name == name:
                    out.append(other)
            except UserError:
                continue  # prefixes such as mercure_prefix are not references
    return out


def registry_for(ref: ImageRef, credentials: Credentials | None, verify: str | bool) -> Registry:
    if not ref.registry:
        raise UserError(f"{ref.name} names no registry host: only images of the site's own registry are pinned here")
    return Registry(ref.registry, credentials, verify)


def resolve(images: Mapping[str, Any], key: str, tag: str | None, registry: Registry | None = None,
            credentials: Credentials | None = None, verify: str | bool = True) -> list[Pin]:
    """What images.<key> (and keys naming the same image) become: name:tag@digest from the registry."""
    ref = parse(str(images[key]))
    tag = tag or ref.tag
    if not tag:
        raise UserError(f"images.{key} ({ref}) has no tag to resolve; give one with --tag (the template pushes "
                        "the built commit's SHA)")
    reg = registry or registry_for(ref, credentials, verify)
    digest = reg.digest(ref.repository, tag)
    if digest is None:
        raise UserError(f"the registry {reg.address} has no {ref.repository}:{tag}: the image was not built (or "
                        "pushed) yet; run the containers project's pipeline, then `bidsflux images pin` again")
    wanted = ref.with_digest(tag, digest)
    return [Pin(k, str(images[k]), wanted) for k in same_image_keys(images, key)]


def write(site_file: Path, pins: list[Pin]) -> bool:
    """Replace each changed images value on its own line of site.yml; True when the file changed."""
    from ruamel.yaml import YAML

    changed = [p for p in pins if p.changed]
    if not changed:
        return False
    text = site_file.read_text(encoding="utf-8")
    doc = YAML(typ="rt").load(text)
    images = doc["images"]
    lines = text.splitlines(keepends=True)
    for p in changed:
        line, col = images.lc.value(p.key)
        current = lines[line]
        # The value as written (plain or quoted) at its column; nothing else on the line moves.
        m = re.compile(r"(['\"]?)" + re.escape(p.before) + r"\1").match(current, col)
        if m is None:
            raise UserError(f"{site_file}:{line + 1}: images.{p.key} is not written on one line as '{p.before}'; "
                            f"set it to {p.after} by hand")
        lines[line] = current[:m.start()] + m.group(1) + p.after + m.group(1) + current[m.end():]
    new = "".join(lines)
    tmp = site_file.with_name(site_file.name + ".pin-tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(site_file)
    return True


def commit(root: Path, site_file: Path, pins: list[Pin]) -> str | None:
    """Commit site.yml in the repository at `root` (when it is a git work tree); the new HEAD."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)

    if git("rev-parse", "--is-inside-work-tree").stdout.strip() != "true":
        return None
    rel = str(site_file.resolve().relative_to(Path(git("rev-parse", "--show-toplevel").stdout.strip()).resolve()))
    changed = [p for p in pins if p.changed]
    subject = "images: pin " + ", ".join(p.key for p in changed) + " to " + (changed[0].after.rsplit("@", 1)[-1][:19]
                                                                             if changed else "")
    body = "\n".join(f"{p.key}: {p.after}" for p in changed)
    env_args = ["-c", "user.name=bidsflux", "-c", "user.email=bidsflux@localhost"]
    has_identity = bool(git("config", "user.email").stdout.strip())
    add = git("add", "--", rel)
    done = subprocess.run(["git", "-C", str(root), *([] if has_identity else env_args), "commit", "-q", "-m", subject,
                           "-m", body, "--", rel], capture_output=True, text=True, check=False)
    if add.returncode != 0 or done.returncode != 0:
        raise UserError(f"site.yml was pinned but not committed: {(add.stderr or done.stderr or done.stdout).strip()[:300]}; "
                        "commit it yourself so the pipeline deploys the same image")
    return git("rev-parse", "HEAD").stdout.strip()
