"""Bootstrap's image step, after GitLab's day zero and runner registration: make sure the image the
DICOM endpoint runs was built in the site, pin it by digest, so the endpoint can start.

An image is built in the site when its repository is `<registry>/<project>/<name>` for a project of
gitlab.yml that has a `ci_config_path` (the containers project running our build template). The
template tags each build with its commit SHA, so what to wait for is `<name>:<head of the project's
default branch>`: when the registry lacks it, the project's pipeline is run (POST
/projects/:id/pipeline), then the registry is polled until the tag is there (or the pipeline failed),
the tag is resolved to its digest, site.yml is pinned, committed and pushed to the self project."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from bidsflux.diagnostics import UserError, seconds_from_env
from bidsflux.images.pin import Pin, commit, resolve, write
from bidsflux.images.registry import Credentials, ImageRef, Registry, parse

BUILD_TIMEOUT_ENV = "BIDSFLUX_IMAGE_BUILD_TIMEOUT"
DEFAULT_BUILD_TIMEOUT = 1800.0  # a cold dicom_indexer build (apk, pip) on a small server
ENDPOINT_SERVICES = {"storescp": ("dicom_endpoint",)}  # swarm services that run the endpoint's image
ENDPOINT_IMAGE = {"storescp": "storescp", "mercure": "dicom_indexer"}
FAILED = {"failed", "canceled", "skipped"}


def endpoint_image_key(site: Mapping[str, Any]) -> str:
    return ENDPOINT_IMAGE.get(str(site["dicom_endpoint"]["kind"]), "dicom_indexer")


def built_project(site: Mapping[str, Any], gitlab_doc: Mapping[str, Any], key: str) -> tuple[ImageRef, str] | None:
    """(the image, the gitlab.yml project that builds it) when images.<key> is built in the site."""
    ref = parse(str(site["images"][key]))
    project, _, _name = ref.repository.rpartition("/")
    spec = (gitlab_doc.get("projects") or {}).get(project)
    if not ref.registry or not isinstance(spec, Mapping) or not spec.get("ci_config_path"):
        return None
    return ref, project


def held_services(site: Mapping[str, Any], gitlab_doc: Mapping[str, Any], live: set[str]) -> set[str]:
    """Endpoint services the first deploy leaves out: their image is built in the site, and they do
    not run yet (GitLab and its registry come up in the same deploy, so the image cannot be there)."""
    key = endpoint_image_key(site)
    if built_project(site, gitlab_doc, key) is None:
        return set()
    return {s for s in ENDPOINT_SERVICES.get(str(site["dicom_endpoint"]["kind"]), ()) if s not in live}


def build_timeout(value: float | None = None) -> float:
    return seconds_from_env(BUILD_TIMEOUT_ENV, DEFAULT_BUILD_TIMEOUT, value)


@dataclass
class ImageResult:
    pins: list[Pin] = field(default_factory=list)
    built: str = ""  # what was waited for, e.g. "registry/…/dicom_indexer:<sha> (pipeline #3, 41s)"
    committed: str | None = None
    skipped_reason: str = ""
    then: Any = None  # what run()'s `then` returned


def _head(project: Any) -> tuple[str, str]:
    branch = project.default_branch or "main"
    return branch, str(project.branches.get(branch).commit["id"])


def _pipeline_for(project: Any, sha: str, branch: str, console: Console) -> Any:
    """The newest pipeline of `sha` unless it failed; else a new one on the default branch."""
    found = project.pipelines.list(sha=sha, order_by="id", sort="desc", per_page=1, get_all=False)
    if found and found[0].status not in FAILED:
        return found[0]
    pipeline = project.pipelines.create({"ref": branch})
    console.print(f"started pipeline #{pipeline.id} of {project.path_with_namespace} on {branch} ({sha[:12]}) "
                  "to build the image", highlight=False, markup=False)
    return pipeline


def wait_for_tag(registry: Registry, ref: ImageRef, tag: str, pipeline: Any, timeout: float, console: Console,
                 interval: float = 5.0, sleep: Callable[[float], None] = time.sleep) -> float:
    """Poll the registry for ref:tag (and the pipeline's status) with progress; seconds waited."""
    started = time.monotonic()
    what = f"{ref.name}:{tag[:12]}"
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task(f"waiting for {what} in {ref.registry}", total=None)
        while True:
            if registry.digest(ref.repository, tag) is not None:
                break
            pipeline.refresh()
            status = str(pipeline.status)
            elapsed = time.monotonic() - started
            if status in FAILED or (status == "success" and registry.digest(ref.repository, tag) is None):
                raise UserError(f"pipeline #{pipeline.id} ({getattr(pipeline, 'web_url', '')}) ended {status} without "
                                f"pushing {what}: see its job log (the build runner `build` of runners.yml must be "
                                "registered and online)")
            if elapsed >= timeout:
                raise UserError(f"{what} was not in {ref.registry} after {elapsed:.0f}s (pipeline #{pipeline.id} is "
                                f"{status}); allow longer with {BUILD_TIMEOUT_ENV}")
            progress.update(task, description=f"waiting for {what} in {ref.registry} (pipeline #{pipeline.id}: {status}; "
                                              f"timeout {timeout:.0f}s)")
            sleep(min(interval, max(0.0, timeout - elapsed)))
    waited = time.monotonic() - started
    console.print(f"{what} is in {ref.registry} (waited {waited:.1f}s)", highlight=False, markup=False)
    return waited


def build_and_pin(ctx: Any, gl: Any, token: str, console: Console, timeout: float | None = None,
                  interval: float = 5.0, push: Callable[[], None] | None = None, user: str = "root") -> ImageResult:
    """The image step with a connected admin client `gl`, its token and user (the registry's
    credentials: GitLab's token service takes a user name with a personal access token)."""
    from bidsflux.gitlab.objects import load_config
    from bidsflux.proxy.trust import requests_verify

    gitlab_doc, site = load_config(ctx.repo)
    key = endpoint_image_key(site)
    found = built_project(site, gitlab_doc, key)
    if found is None:
        return ImageResult(skipped_reason=f"images.{key} is not built in the site (no gitlab.yml project with "
                                          "ci_config_path names it)")
    ref, project_path = found
    registry = Registry(ref.registry, Credentials(user, token), requests_verify(site))
    if ref.digest and registry.digest(ref.repository, ref.digest) == ref.digest:
        return ImageResult(skipped_reason=f"images.{key} is pinned to {ref.digest[:19]} and the registry has it")
    project = gl.projects.get(project_path)
    branch, sha = _head(project)
    built = f"{ref.name}:{sha[:12]} already in the registry"
    if registry.digest(ref.repository, sha) is None:
        pipeline = _pipeline_for(project, sha, branch, console)
        waited = wait_for_tag(registry, ref, sha, pipeline, build_timeout(timeout), console, interval)
        built = f"{ref.name}:{sha[:12]} (pipeline #{pipeline.id}, waited {waited:.0f}s)"
    pins = resolve(site["images"], key, sha, registry=registry)
    result = ImageResult(pins, built)
    if write(ctx.repo.site_file, pins):
        result.committed = commit(ctx.repo.root, ctx.repo.site_file, pins)
        if push is not None and result.committed:
            push()
    return result


def resume_hint(ctx: Any) -> str:
    site = f" --site {ctx.repo.site_file}"
    return (f"the swarm and GitLab parts of bootstrap are done; resume with `bidsflux bootstrap{site} --yes`, or by "
            "hand: run the containers project's pipeline, then `bidsflux images pin --tag <its commit SHA>`, "
            f"`git push` this repository and `bidsflux deploy{site}`")


@contextmanager
def registry_login(registry: str, user: str, token: str) -> Iterator[None]:
    """The Docker CLI logged in to `registry` for the block (DOCKER_CONFIG: a private copy of the
    caller's config plus this login), so `docker stack deploy --with-registry-auth` hands the swarm
    what it needs to pull the site-built image; the copy is removed afterwards."""
    import base64
    import json
    import shutil
    import tempfile

    previous = os.environ.get("DOCKER_CONFIG")
    source = Path(previous or Path.home() / ".docker") / "config.json"
    folder = tempfile.mkdtemp(prefix="bidsflux-docker-")
    try:
        try:
            config = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        config.setdefault("auths", {})[registry] = {"auth": base64.b64encode(f"{user}:{token}".encode()).decode()}
        config.pop("credsStore", None)  # the login above, not a helper, must answer for this registry
        target = Path(folder) / "config.json"
        target.touch(mode=0o600)
        target.write_text(json.dumps(config), encoding="utf-8")
        os.environ["DOCKER_CONFIG"] = folder
        yield
    finally:
        if previous is None:
            os.environ.pop("DOCKER_CONFIG", None)
        else:
            os.environ["DOCKER_CONFIG"] = previous
        shutil.rmtree(folder, ignore_errors=True)


def pull_credential(gitlab_doc: Any, site: Any, image: str, fallback: tuple[str, str]) -> tuple[str, str]:
    """gitlab.yml's read_registry deploy token for `image` when the values file holds it (day zero
    made it), so the swarm keeps a credential that outlives this step; else `fallback`."""
    from bidsflux.gitlab.deploy_tokens import pull_logins
    from bidsflux.swarm.secretstore import read_values_file

    try:
        values = read_values_file(site["secrets"]["file"])
    except (OSError, KeyError, UserError):
        return fallback
    return next(iter(pull_logins(gitlab_doc, site, [image], values).values()), fallback)


def run(ctx: Any, console: Console, container: Any = None, timeout: float | None = None,
        interval: float = 5.0, then: Callable[[], Any] | None = None) -> ImageResult:
    """Bootstrap's image step: its own short-lived admin token (minted in the GitLab task, revoked at
    the end), the build if needed, the pin, and the push of the pinned site.yml to the self project.
    `then` (the endpoint's deploy) runs with the Docker CLI logged in to the registry with gitlab.yml's
    read_registry deploy token when day zero stored one (a credential the swarm keeps), else with
    this step's token while it is valid, so the swarm's first pull of the image is authorised."""
    from bidsflux.gitlab.dayzero import gitlab_url, push_repository
    from bidsflux.gitlab.objects import connect, desired, load_config, scrub
    from bidsflux.gitlab.root_token import find_gitlab_container, root_token

    url = gitlab_url(ctx.site)
    hidden: list[str] = []
    try:
        gitlab_doc, site = load_config(ctx.repo)
        if built_project(site, gitlab_doc, endpoint_image_key(site)) is None:
            return ImageResult(skipped_reason="the endpoint's image is not built in the site")
        target = desired(gitlab_doc, site).self_project
        box = container if container is not None else find_gitlab_container(ctx.client, ctx.stack)
        with root_token(box) as token:
            hidden.append(token.value)
            gl = connect(url, token.value, site=site)

            def push() -> None:
                if target is not None:
                    push_repository(ctx.repo.root, url, target.path, token.value)

            result = build_and_pin(ctx, gl, token.value, console, timeout, interval, push)
            if then is not None:
                found = built_project(site, gitlab_doc, endpoint_image_key(site))
                assert found is not None
                user, secret = pull_credential(gitlab_doc, site, str(found[0]), ("root", token.value))
                with registry_login(found[0].registry, user, secret):
                    result.then = then()
            return result
    except UserError as exc:
        raise UserError(f"the image step failed: {scrub(str(exc), hidden)}\n{resume_hint(ctx)}") from None
    except Exception as exc:  # noqa: BLE001 - an engine or HTTP error still ends in the resume message
        first = scrub((str(exc).splitlines() or [type(exc).__name__])[0], hidden)[:200]
        raise UserError(f"the image step failed: {type(exc).__name__}: {first}\n{resume_hint(ctx)}") from None
