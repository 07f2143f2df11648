"""The CLI as a site administrator meets it (issue 19): exit codes a pipeline can trust, text printed
as written, hints naming real commands, help with examples and exit codes, doctor, timeouts that
name what they waited for, JSON on request (errors too), tables that fit the terminal."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click
import pytest

from bidsflux.cli import main
from support import REPO_ROOT, cli

SCRIPTS = str(REPO_ROOT / "scripts")


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a child process (real stdout/stderr, real exit status)."""
    full_env = {**os.environ, "PYTHONPATH": SCRIPTS, **(env or {})}
    return subprocess.run([sys.executable, "-m", "bidsflux", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, check=False)


def commands(group: click.Group = main, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from commands(cmd, f"{prefix}{name} ")
        elif not cmd.hidden:
            yield f"{prefix}{name}", cmd


# --- (1) exit codes ---------------------------------------------------------------------------

def test_pipeline_pattern_does_not_take_a_typo_for_pending_changes() -> None:
    shell = f'PYTHONPATH={SCRIPTS} {sys.executable} -m bidsflux plan --fromat json || [ $? -eq 2 ]'
    done = subprocess.run(["sh", "-c", shell], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0, "a mistyped option passed as 'changes pending'"
    assert "No such option '--fromat'" in done.stderr


@pytest.mark.parametrize("args", [
    ["plan", "--fromat", "json"], ["gitlab", "plan", "--bogus"], ["mercure", "plan", "--format", "yaml"],
    ["secrets", "rotate", "--timeout", "soon"], ["no-such-command"], ["--no-such-global", "validate"],
])
def test_usage_errors_exit_64_everywhere(args: list[str]) -> None:
    result = cli(*args)
    assert result.exit_code == 64, (args, result.exit_code, result.output)


# --- (2) user text is never markup ------------------------------------------------------------

def test_brackets_in_user_values_are_printed_as_written(tmp_path: Path) -> None:
    weird = tmp_path / "a[/x]b[red]c[/red].yml"
    done = run("render", "--root", str(REPO_ROOT), "--site", str(weird))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "MarkupError" not in done.stderr
    assert "a[/x]b[red]c[/red].yml" in done.stderr + done.stdout


def test_the_error_handler_prints_markup_like_text_literally() -> None:
    done = subprocess.run([sys.executable, "-c", (
        "import click, sys\n"
        "from bidsflux.console import friendly_errors\n"
        "from bidsflux.diagnostics import UserError\n"
        "@click.command()\n@friendly_errors\n"
        "def boom():\n    raise UserError('value [/x] and [red]red[/red] and [bold]')\n"
        "boom()\n")], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SCRIPTS}, check=False)
    assert done.returncode == 1, done.stderr
    assert "error: value [/x] and [red]red[/red] and [bold]" in done.stderr


# --- (4) hints name real commands -------------------------------------------------------------

def _known_paths() -> set[str]:
    paths = {p for p, _ in commands()}
    groups = {p.rsplit(" ", 1)[0] for p in paths if " " in p}
    return paths | groups


def test_every_command_a_message_or_the_readme_names_exists() -> None:
    """Commands quoted in messages, fixes and the README (`bidsflux ...`, "bidsflux ..." or a line
    of a code block) must exist: a wrong hint sends an administrator nowhere."""
    known = _known_paths()
    groups = {k.split()[0] for k in known if " " in k}
    sources = [p for p in (REPO_ROOT / "scripts").rglob("*.py")] + [REPO_ROOT / "README.md"]
    wrong = []
    for path in sources:
        text = path.read_text()
        if path.suffix == ".md":  # prose may say "bidsflux runs ..."; commands are in code
            text = "\n".join(re.findall(r"```sh\n(.*?)```", text, re.S) + re.findall(r"`[^`\n]+`", text))
        for m in re.finditer(r"""(?:[`"'(]|^)bidsflux ([a-z][a-z0-9-]*)(?: ([a-z][a-z0-9-]*))?([^`"'\n]*)""", text, re.M):
            first, second, rest = m.group(1), m.group(2), m.group(3)
            if first == "pid":  # the content of mercure.lock, not a command
                continue
            if first not in known and first not in groups:
                wrong.append(f"{path.name}: bidsflux {first}")
            elif first in groups and second and f"{first} {second}" not in known:
                wrong.append(f"{path.name}: bidsflux {first} {second}")
            else:
                name = f"{first} {second}" if first in groups and second else first
                cmd = dict(commands()).get(name)
                if cmd is None:
                    continue
                options = {o for p in cmd.params for o in getattr(p, "opts", [])} | {
                    o for p in main.params for o in getattr(p, "opts", [])} | {"--help"}
                for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", re.split(r"[;|&>#]", rest)[0]):
                    if option not in options:
                        wrong.append(f"{path.name}: bidsflux {name} {option}")
    assert wrong == [], wrong


def test_readme_usage_lines_match_the_help() -> None:
    for line in (REPO_ROOT / "README.md").read_text().splitlines():
        m = re.match(r"^bidsflux ((?:[a-z][a-z-]+ )*[a-z][a-z-]+)\s+(.*?)\s*(#|$)", line)
        if not m:
            continue
        path = m.group(1).strip()
        cmd = dict(commands()).get(path)
        if cmd is None:
            continue
        usage = cmd.get_usage(click.Context(cmd, info_name=f"bidsflux {path}"))
        arguments = re.sub(r"--?[a-z][a-z-]*(?:[ =][A-Z][A-Z_=]*|\b)", "", m.group(2))  # options and their values
        for metavar in re.findall(r"\b[A-Z][A-Z_]+\b", arguments):
            assert metavar in usage, f"README: `{line.strip()}` but help says `{usage.strip()}`"


# --- (7) help, global options, completion, version ---------------------------------------------

def test_every_command_help_has_an_example_and_its_exit_codes() -> None:
    for path, _ in commands():
        result = cli(*path.split(), "--help")
        assert result.exit_code == 0, path
        assert "Examples:" in result.output and "bidsflux " in result.output.split("Examples:")[1], path
        codes = result.output.rsplit("Exit codes:", 1)[1] if "Exit codes:" in result.output else ""
        assert re.search(r"\b64\b", codes) and re.search(r"\b1\b", codes), path
        if path in ("plan", "gitlab plan", "mercure plan"):
            assert re.search(r"\b2\s+changes pending", codes), path


def test_site_and_root_work_before_the_subcommand(repo_copy: Path) -> None:
    assert cli("--root", str(repo_copy), "validate").exit_code == 0
    assert cli("--site", str(repo_copy / "stack/site.yml"), "validate").exit_code == 0
    (repo_copy / "stack/site.yml").write_text((repo_copy / "stack/site.yml").read_text().replace(
        "advertise_addr: 127.0.0.1", "advertise_addr: 10.0.0.300"))
    result = cli("--root", str(repo_copy), "validate")
    assert result.exit_code == 1 and "10.0.0.300" in result.output


def test_shell_completion_works_and_is_documented() -> None:
    done = run(env={"_BIDSFLUX_COMPLETE": "bash_source"})
    assert done.returncode == 0 and "complete -o nosort -F" in done.stdout
    assert "_BIDSFLUX_COMPLETE=bash_source" in (REPO_ROOT / "README.md").read_text()
    assert "_BIDSFLUX_COMPLETE" in cli("--help").output


def test_version_names_the_commit() -> None:
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    result = cli("--version")
    assert result.exit_code == 0 and f"(commit {head})" in result.output
    assert "commit abc123" in cli("--version", env={"BIDSFLUX_COMMIT": "abc123"}).output


# --- (7) doctor, tables, -q, JSON ---------------------------------------------------------------

def _site_with_paths_under(repo: Path, base: Path) -> None:
    site = repo / "stack/site.yml"
    text = site.read_text().replace("/var/lib/bidsflux", str(base / "state")).replace("/srv/bidsflux", str(base / "srv"))
    site.write_text(text)


def test_doctor_checks_this_node_without_changing_it(repo_copy: Path, tmp_path: Path) -> None:
    _site_with_paths_under(repo_copy, tmp_path)
    env = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    result = cli("doctor", "--root", str(repo_copy), "--format", "json", env=env)
    assert result.exit_code == 1
    findings = json.loads(result.output)
    by_check = {f["check"]: f for f in findings}
    assert by_check["engine"]["level"] == "fail" and "unix:///nonexistent/docker.sock" in by_check["engine"]["message"]
    missing = [f for f in findings if f["check"] == "data dirs" and f["level"] == "fail"]
    assert missing and "mkdir -p" in missing[0]["fix"]
    assert not (tmp_path / "state").exists(), "doctor created a folder"


def test_tables_fit_the_terminal_width(repo_copy: Path, tmp_path: Path) -> None:
    _site_with_paths_under(repo_copy, tmp_path)
    for args in (["doctor"], ["health", "--check", "disks"]):
        done = run(*args, "--root", str(repo_copy), env={"COLUMNS": "72", "DOCKER_HOST": "unix:///nonexistent/d.sock"})
        table = [ln for ln in done.stdout.splitlines() if ln.strip()]
        assert table, (args, done.stderr)
        assert max(len(ln) for ln in table) <= 72, (args, max(len(ln) for ln in table))


def test_quiet_prints_only_what_was_asked(repo_copy: Path, tmp_path: Path) -> None:
    _site_with_paths_under(repo_copy, tmp_path)
    env = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    loud = run("doctor", "--root", str(repo_copy), env=env)
    quiet = run("-q", "doctor", "--root", str(repo_copy), env=env)
    assert loud.stdout.strip() and quiet.stdout.strip() == ""
    assert quiet.returncode == loud.returncode == 1
    assert run("-v", "--root", str(repo_copy), "validate").returncode == 0


@pytest.mark.parametrize("args,says", [
    (["secrets", "list"], "cannot reach the Docker engine at unix:///nonexistent/d.sock"),
    (["deploy"], "cannot reach the Docker engine at unix:///nonexistent/d.sock"),
    (["secrets", "rotate", "--all"], "cannot reach the Docker engine at unix:///nonexistent/d.sock"),
    (["mercure", "push", "--config-dir", "/nonexistent/mercure/config"], "/nonexistent/mercure/config does not exist"),
    (["runners", "register"], "no GitLab token"),
    (["gitlab", "tokens", "rotate"], "no GitLab token"),
    (["plan", "--site", "/nonexistent/site.yml"], "problem(s) in the site files"),
])
def test_json_format_reports_errors_as_json(args: list[str], says: str) -> None:
    result = cli(*args, "--root", str(REPO_ROOT), "--format", "json",
                 env={"DOCKER_HOST": "unix:///nonexistent/d.sock", "BIDSFLUX_GITLAB_TOKEN": ""})
    assert result.exit_code == 1, result.output
    stdout = result.stdout
    error = json.loads(stdout[stdout.index("{"):])
    assert says in error["error"], error
    if "site files" in says:
        assert error["diagnostics"][0]["message"] == "file not found"


def test_verbose_names_the_engine_and_url_it_talks_to(gitlab_emulator) -> None:  # type: ignore[no-untyped-def]
    env = {"BIDSFLUX_GITLAB_URL": gitlab_emulator.url, "BIDSFLUX_GITLAB_TOKEN": gitlab_emulator.admin_token}
    done = run("-v", "gitlab", "plan", "--root", str(REPO_ROOT), env=env)
    assert done.returncode in (0, 2), done.stderr
    assert f"GitLab at {gitlab_emulator.url}: signed in as root" in done.stderr
    assert gitlab_emulator.admin_token not in done.stderr + done.stdout
    quiet = run("gitlab", "plan", "--root", str(REPO_ROOT), env=env)
    assert "signed in" not in quiet.stderr


def test_every_engine_command_has_a_connect_timeout() -> None:
    from bidsflux.helptext import ENGINE_COMMANDS

    for path in ENGINE_COMMANDS:
        assert "--connect-timeout" in cli(*path.split(), "--help").output, path


# --- (6) timeouts that name what they waited for; messages never cut mid-word --------------------

@pytest.fixture
def hung_unix_socket(tmp_path: Path) -> Iterator[str]:
    """A socket that accepts connections and never answers (an engine that hangs)."""
    path = tmp_path / "hung.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    try:
        yield f"unix://{path}"
    finally:
        server.close()


@pytest.fixture
def hung_tcp_port() -> Iterator[int]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_a_hung_docker_engine_ends_at_the_connect_timeout_naming_the_socket(hung_unix_socket: str) -> None:
    started = time.monotonic()
    done = run("--connect-timeout", "1", "secrets", "list", "--root", str(REPO_ROOT),
               env={"DOCKER_HOST": hung_unix_socket})
    assert done.returncode == 1 and time.monotonic() - started < 20
    assert hung_unix_socket in done.stderr and "waited up to 1s" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_hung_gitlab_ends_at_the_connect_timeout_naming_the_url(hung_tcp_port: int) -> None:
    url = f"http://127.0.0.1:{hung_tcp_port}"
    started = time.monotonic()
    done = run("gitlab", "plan", "--root", str(REPO_ROOT), "--url", url, "--connect-timeout", "1",
               env={"BIDSFLUX_GITLAB_TOKEN": "glpat-not-a-real-token-000"})
    assert done.returncode == 1 and time.monotonic() - started < 20
    assert url in done.stderr and "no answer within 1s" in done.stderr
    assert "glpat-not-a-real-token-000" not in done.stderr + done.stdout


def test_a_long_gitlab_error_page_is_shortened_at_a_word_boundary() -> None:
    # GitLab's Workhorse answers 502 with an HTML page while Puma starts ("GitLab is not responding").
    body = ("<!DOCTYPE html><html><head><title>GitLab is not responding (502)</title></head><body>"
            + "Whoops, GitLab is taking too much time to respond. " * 20 + "</body></html>")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            data = body.encode()
            self.send_response(502)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = run("gitlab", "plan", "--root", str(REPO_ROOT), "--url", f"http://127.0.0.1:{server.server_port}",
                   env={"BIDSFLUX_GITLAB_TOKEN": "glpat-not-a-real-token-000"})
    finally:
        server.shutdown()
    assert done.returncode == 1
    m = re.search(r"GitLab answered 502 while [^:]+: (.*?…)", done.stderr, re.S)
    assert m, done.stderr
    words = re.findall(r"[A-Za-z]+", body)
    last_word = re.findall(r"[A-Za-z]+", m.group(1))[-1]
    assert last_word in words, f"cut mid-word: ...{m.group(1)[-30:]}"


# --- (5) asking before changing production ------------------------------------------------------

def _on_a_terminal(args: list[str], env: dict[str, str], answer: str | None, timeout: float = 60) -> tuple[int, str]:
    """Run bidsflux with stdin/stdout on a pseudo-terminal; answer the first question with `answer`."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "bidsflux", *args], stdin=slave, stdout=slave, stderr=slave,
                            env={**os.environ, "PYTHONPATH": SCRIPTS, **env}, close_fds=True)
    os.close(slave)
    seen, answered, deadline = b"", False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
            if answer is not None and not answered and b"Continue?" in seen:
                os.write(master, answer.encode() + b"\n")
                answered = True
            if proc.poll() is not None and not ready:
                break
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return code, seen.decode(errors="replace")


def test_gitlab_apply_shows_the_plan_and_asks_on_a_terminal(gitlab_emulator, repo_copy: Path) -> None:  # type: ignore[no-untyped-def]
    env = {"BIDSFLUX_GITLAB_URL": gitlab_emulator.url, "BIDSFLUX_GITLAB_TOKEN": gitlab_emulator.admin_token,
           "CI": "", "GITLAB_CI": ""}
    mark = gitlab_emulator.mark()
    code, output = _on_a_terminal(["gitlab", "apply", "--root", str(repo_copy)], env, answer="n")
    assert "Continue?" in output and "dicom_bot" in output, output  # the plan, then the question
    assert code == 1 and "stopped at your request; nothing was changed" in output
    assert not gitlab_emulator.writes(mark)


def test_yes_and_ci_skip_the_question() -> None:
    snippet = ("from bidsflux.console import confirm_plan\n"
               "import sys\nconfirm_plan(['  remove x'], 'x is removed', yes=sys.argv[1] == 'yes')\nprint('went on')\n")
    for flag, env in (("yes", {"CI": ""}), ("no", {"CI": "true"}), ("no", {"GITLAB_CI": "true", "CI": ""})):
        import pty
        master, slave = pty.openpty()
        proc = subprocess.run([sys.executable, "-c", snippet, flag], stdin=slave, stdout=slave, stderr=slave,
                              env={**os.environ, "PYTHONPATH": SCRIPTS, **env}, timeout=30, check=False)
        os.close(slave)
        out = os.read(master, 4096).decode()
        os.close(master)
        assert proc.returncode == 0 and "went on" in out and "Continue?" not in out, (flag, env, out)


def test_runners_register_lists_what_it_replaces_and_asks(gitlab_emulator, repo_copy: Path) -> None:  # type: ignore[no-untyped-def]
    import gitlab

    gl = gitlab.Gitlab(gitlab_emulator.url, private_token=gitlab_emulator.admin_token)
    gl.auth()
    stray = gl.user.runners.create({"runner_type": "instance_type", "description": "old-hand-made"})
    env = {"BIDSFLUX_GITLAB_URL": gitlab_emulator.url, "BIDSFLUX_GITLAB_TOKEN": gitlab_emulator.admin_token,
           "CI": "", "GITLAB_CI": ""}
    mark = gitlab_emulator.mark()
    code, output = _on_a_terminal(["runners", "register", "--root", str(repo_copy)], env, answer="n")
    assert f"delete runner #{stray.id} 'old-hand-made' (not in runners.yml)" in output, output
    assert "register deploy (service gitlab-runner-dind" in output
    assert code == 1 and "stopped at your request" in output
    assert not gitlab_emulator.writes(mark)
    assert [r.description for r in gl.runners.all(get_all=True)] == ["old-hand-made"]


def test_runners_list_fits_the_terminal(gitlab_emulator) -> None:  # type: ignore[no-untyped-def]
    env = {"BIDSFLUX_GITLAB_URL": gitlab_emulator.url, "BIDSFLUX_GITLAB_TOKEN": gitlab_emulator.admin_token,
           "COLUMNS": "64"}
    done = run("runners", "list", "--root", str(REPO_ROOT), env=env)
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    assert any("deploy" in ln and "missing" in ln for ln in lines), done.stdout
    assert max(len(ln) for ln in lines) <= 64


def test_doctor_on_a_node_without_the_repository_checks_the_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("doctor", "--format", "json", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    findings = {f["check"]: f for f in json.loads(result.output)}
    assert findings["site"]["level"] == "warn" and "--root" in findings["site"]["fix"]
    assert findings["engine"]["level"] == "fail" and result.exit_code == 1
