"""Mutation fuzzing of the site files: mutators that each know whether their input must be
refused, and a runner that executes one CLI command per case in a forked child bounded in time
and memory. Shared by tests/site/test_fuzz.py (a short seeded run in the suite) and
tests/site/fuzz_campaign.py (the long campaign that prints figures)."""

from __future__ import annotations

import atexit
import base64
import json
import math
import os
import random
import re
import resource
import select
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
PARTS = ["stack", "schemas", "ci-templates", ".gitlab-ci.yml"]
SITE_FILES = [
    "stack/site.yml", "stack/bidsflux.stack.yml", "stack/runners.yml", "stack/gitlab.yml",
    "stack/mercure/rules.yml", "stack/mercure/docker-compose.yml",
]
COMMANDS: list[tuple[str, ...]] = [
    ("validate", "--format", "json"),
    ("render", "--secret-versions", "initial"),
    ("mercure", "render"),
]
TIME_LIMIT_S = 5.0  # CPU seconds of one command
WALL_FACTOR = 12  # wall-time safety net for a command that hangs without using CPU
MEMORY_LIMIT_MB = 200
# file:line:col with a real line, as Diagnostic prints it
POSITIONED = re.compile(r"(?m)(?:^|\s)[\w./<> -]+\.(?:yml|yaml|json):[1-9][0-9]*:[0-9]+:")


@dataclass
class Case:
    """One mutated repository: file texts replaced, and whether validate must refuse it."""

    kind: str
    what: str
    files: dict[str, str]
    must_refuse: bool

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "what": self.what, "files": self.files, "must_refuse": self.must_refuse}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Case:
        return Case(data["kind"], data["what"], {k: decompress(v) for k, v in data["files"].items()}, data["must_refuse"])


@dataclass
class Outcome:
    command: tuple[str, ...]
    status: str  # ok | refused | traceback | hang | memory | unpositioned | crash
    exit_code: int | None
    seconds: float
    detail: str = ""


@dataclass
class Figures:
    configurations: int = 0
    runs: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    accepted_bad: int = 0
    failures: list[tuple[Case, Outcome | None]] = field(default_factory=list)

    def add(self, case: Case, outcomes: list[Outcome]) -> None:
        self.configurations += 1
        bad = False
        for o in outcomes:
            self.runs += 1
            self.counts[o.status] = self.counts.get(o.status, 0) + 1
            if o.status not in ("ok", "refused"):
                bad = True
                self.failures.append((case, o))
        validate = next((o for o in outcomes if o.command[0] == "validate"), None)
        if case.must_refuse and validate is not None and validate.status == "ok":
            self.accepted_bad += 1
            self.failures.append((case, validate))
            bad = True
        del bad

    def line(self) -> str:
        c = self.counts
        return (f"{self.configurations} configurations, {self.runs} runs: "
                f"tracebacks {c.get('traceback', 0) + c.get('crash', 0)}, hangs {c.get('hang', 0)}, "
                f"memory blow-ups {c.get('memory', 0)}, unpositioned refusals {c.get('unpositioned', 0)}, "
                f"accepted-bad {self.accepted_bad} (ok {c.get('ok', 0)}, refused {c.get('refused', 0)})")


# ---- reading and writing the base files -------------------------------------------------------

def base_texts(root: Path = REPO_ROOT) -> dict[str, str]:
    return {rel: (root / rel).read_text(encoding="utf-8") for rel in SITE_FILES}


def _split_modeline(text: str) -> tuple[str, str]:
    first, _, rest = text.partition("\n")
    return first + "\n", rest


def dump_with_modeline(original: str, data: Any) -> str:
    modeline, _ = _split_modeline(original)
    return modeline + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=10_000)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _set(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return data


def _delete(data: Any, path: tuple[Any, ...]) -> Any:
    node = data
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return data


# Jinja expressions among the mutations that render without error (to "0").
_RENDERS = frozenset({"{{ images.gitlab|int(base=99) }}"})


class Mutator:
    """Produces cases from the base files with a seeded random generator."""

    def __init__(self, seed: int, base: dict[str, str] | None = None) -> None:
        self.rng = random.Random(seed)
        self.base = base or base_texts()
        self.data = {rel: yaml.safe_load(text) for rel, text in self.base.items()}
        # a runner that has tags (names change with the fleet)
        self._runner = next(n for n, r in self.data["stack/runners.yml"]["runners"].items() if r.get("tags"))
        self.kinds: list[tuple[str, Callable[[], Case]]] = [
            ("bomb", self.bomb), ("deep", self.deep), ("big", self.big),
            ("storage_remote", self.storage_remote), ("rule", self.rule), ("jinja", self.jinja),
            ("yaml_type", self.yaml_type), ("key_type", self.key_type), ("newline", self.newline),
            ("credential", self.credential), ("path", self.path), ("random_value", self.random_value),
            ("delete", self.delete), ("text", self.text),
        ]

    def case(self) -> Case:
        _, make = self.rng.choice(self.kinds)
        return make()

    # -- helpers
    def _data(self, rel: str) -> Any:
        return json.loads(json.dumps(self.data[rel], default=str))

    def _with(self, rel: str, data: Any) -> dict[str, str]:
        return {rel: dump_with_modeline(self.base[rel], data)}

    def _replace_line(self, rel: str, old: str, new: str) -> dict[str, str]:
        text = self.base[rel]
        assert old in text, (rel, old)
        return {rel: text.replace(old, new, 1)}

    # -- must-refuse kinds
    def bomb(self) -> Case:
        rel = self.rng.choice(SITE_FILES)
        width = self.rng.randint(6, 10)
        levels = self.rng.randint(6, 9)
        lines = ["x-bomb-0: &a0 [" + ", ".join(["lol"] * width) + "]"]
        for i in range(1, levels):
            lines.append(f"x-bomb-{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
        if self.rng.random() < 0.3:  # merge-key flavour
            lines = ["x-m0: &m0 {a: 1, b: 2}"] + [
                f"x-m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 2) + f"], k{i}: 1}}" for i in range(1, 40)
            ]
        modeline, rest = _split_modeline(self.base[rel])
        return Case("bomb", f"{rel}: alias bomb {width}^{levels}", {rel: modeline + "\n".join(lines) + "\n" + rest}, True)

    def deep(self) -> Case:
        rel = self.rng.choice(SITE_FILES)
        depth = self.rng.choice([100, 1000, 5000, 50000])
        style = self.rng.choice(["flow_seq", "flow_map", "block"])
        if style == "flow_seq":
            value = "[" * depth + "]" * depth
        elif style == "flow_map":
            value = "{a: " * depth + "1" + "}" * depth
        else:
            value = "\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(min(depth, 400))) + "  " * 401 + "v: 1"
        modeline, rest = _split_modeline(self.base[rel])
        return Case("deep", f"{rel}: nesting {depth} ({style})", {rel: modeline + f"x-deep: {value}\n" + rest}, True)

    def big(self) -> Case:
        rel = self.rng.choice(SITE_FILES)
        size = self.rng.choice([2, 8, 30]) * 1024 * 1024
        modeline, rest = _split_modeline(self.base[rel])
        return Case("big", f"{rel}: {size >> 20} MiB document", {rel: modeline + "x-big: " + "a" * size + "\n" + rest}, True)

    def storage_remote(self) -> Case:
        bad = self.rng.choice([
            "s3://host:{PatientID}/x", "s3://host:99999/x", "s3://h:abc/x", "s3://[::1/x", "s3:///x",
            "s3://host:0/x", "s3://user:pw@host:9000/x", "s3://s3.localhost:9000/x\n", "s3://ho st/x",
            "s3://host:-1/x", "s3://host:9000/{PatientID.__class__}", "s3://host:9000/{0}", "s3://{PatientID}:9000/x",
            "s3://host:9000/{PatientID!r:>99999999}", "s3://host:9000/{PatientID:{StudyDate}}",
            "s3://host:9000/{StudyDescriptionPath[99999999999999999999]}",
        ])
        data = self._data("stack/site.yml")
        key = self.rng.choice(["storage_remote", "storage_remote", "gitlab_group_template"])
        if key == "gitlab_group_template":
            bad = self.rng.choice(["{PatientID.__class__}", "{0}", "{}", "{PatientID!r:>99999999}", "{PatientID:{StudyDate}}",
                                   "{StudyDescriptionPath[99999999999999999999]}", "{", "}{", "{PatientID.real}",
                                   "{StudyDescriptionPath[1].__class__}", "{Scanner}"])
        data["indexer"][key] = bad
        return Case("storage_remote", f"indexer.{key} = {bad!r}", self._with("stack/site.yml", data), True)

    def rule(self) -> Case:
        bad = self.rng.choice([
            "tags" + ".a" * 100000, "(" * 5000 + "tags" + ")" * 5000, "'{0.__init__.__globals__}'.format(tags)",
            "'{0.__class__}'.format(tags)", "'{.__class__}'.format_map(tags)", "'a' * 99999999999",
            "'a' * 10**10", "[1] * 10**9", "2 ** 99999999", "9**9**9", "len('x' * 10**12) > 0",
            "str.format('{0.__class__}', tags)", "'%s' % tags.__class__", "not " * 100000 + "True",
            "-" * 100000 + "1", "tags.Modality == 'MR' " + "and True " * 20000, "tags.Modality.format('{0.x}')",
            "'{0[0].__class__}'.format([tags])", "(lambda: 1)()",
            "getattr(tags, '__class__')", "'x' * int('9' * 20)", "max(range(10**12))",
        ])
        data = self._data("stack/mercure/rules.yml")
        data["rules"]["mr_completed_study"]["rule"] = bad
        return Case("rule", f"rule = {bad[:60]!r}", self._with("stack/mercure/rules.yml", data), True)

    def jinja(self) -> Case:
        bad = self.rng.choice([
            "{{ 1/0 }}", "{{ 'a' * 10**10 }}", "{{ 10**(10**10) }}", "{{ range(10**10) | list }}",
            "{{ images.gitlab[99] }}", "{{ ''.__class__ }}", "{{ nope }}", "{{ 'a' * 99999999999 }}",
            "{{ [1] * 10**9 }}", "{{ images.gitlab|int(base=99) }}", "{{ '%d' % 'x' }}", "{{ (1,)[5] }}",
            "{{ 'x'.ljust(10**10) }}", "{{ 'a' | center(10**10) }}", "{{ lipsum(10**6) }}",
            "{{ 'x' | indent(10**10) }}", "{{ 'x' | wordwrap(0) }}", "{{ '{0.__class__}'.format(1) }}",
            "{% for i in range(10**8) %}{% endfor %}", "{{ 'x' | truncate(-1) }}", "{{ ports.http | string * 10**10 }}",
        ])
        where = self.rng.choice(["module_image", "module_env", "stack_image", "stack_when", "compose"])
        if where.startswith("module"):
            data = self._data("stack/mercure/rules.yml")
            mod = data["modules"]["dicom_indexer"]
            if where == "module_image":
                mod["image"] = bad
            else:
                mod["environment"]["LOG_LEVEL"] = bad
            # Jinja's int filter returns 0 for text it cannot read: that renders, and "0" is a value
            must = bad not in _RENDERS
            return Case("jinja", f"{where} = {bad!r}", self._with("stack/mercure/rules.yml", data), must)
        if bad in _RENDERS:
            bad = "{{ 1/0 }}"
        if where == "compose":
            files = self._replace_line("stack/mercure/docker-compose.yml", '"{{ paths.mercure_base.path }}/config:', f'"{bad}/config:')
            return Case("jinja", f"{where} = {bad!r}", files, True)
        data = self._data("stack/bidsflux.stack.yml")
        if where == "stack_image":
            data["services"]["minio"]["image"] = bad
        else:
            expr = bad.removeprefix("{{ ").removesuffix(" }}") if bad.startswith("{{") else "1/0"
            data["services"]["minio"]["x-bidsflux-when"] = expr
        text = dump_with_modeline(self.base["stack/bidsflux.stack.yml"], data)
        return Case("jinja", f"{where} = {bad!r}", {"stack/bidsflux.stack.yml": text}, True)

    def yaml_type(self) -> Case:
        value = self.rng.choice([
            "2024-01-01", "2001-12-14t21:59:43.10-05:00", "!!binary aGVsbG8=", "!!set {a, b}",
            "!!omap [a: 1]", "!custom x", "!!timestamp 2020-01-01", "!!python/name:os.system", "!!float 1e400",
            "!!int 0x10", "!!str", "!!null ''", "!!bool yes", "!!map {a: 1}", "!!seq [1]",
        ])
        rel, line, new = self.rng.choice([
            ("stack/site.yml", "  name: bidsflux", "  name: {v}"),
            ("stack/site.yml", "  ae_title: BIDSFLUX", "  ae_title: {v}"),
            ("stack/site.yml", "  session_name_tag: PatientName", "  session_name_tag: {v}"),
            ("stack/site.yml", '  mercure_tag: "0.4.1"', "  mercure_tag: {v}"),
            ("stack/mercure/rules.yml", "      LOG_LEVEL: INFO", "      LOG_LEVEL: {v}"),
            ("stack/mercure/rules.yml", "    comment: run the indexer", "    comment: {v}\n    x: run the indexer"),
            ("stack/mercure/rules.yml", "    ae_title: BIDSFLUX", "    ae_title: {v}"),
            ("stack/mercure/rules.yml", "    image: \"{{ images.dicom_indexer }}\"", "    image: {v}"),
            ("stack/mercure/rules.yml", "    study_trigger_series: \"'MRSI' and 'STAGE_preproc'\"", "    study_trigger_series: {v}"),
            ("stack/runners.yml", "      image: alpine:3.20", "      image: {v}"),
            ("stack/gitlab.yml", "    name: DICOM bot", "    name: {v}"),
        ])
        files = self._replace_line(rel, line, new.replace("{v}", value))
        # A typed value where text belongs must be refused; a few tags produce text (!!str)
        must = value not in ("!!str",) and not (rel.endswith("rules.yml") and "LOG_LEVEL" in line and value in ("!!float 1e400", "!!int 0x10", "!!bool yes"))
        if "comment: {v}" in new:
            must = True  # x: is an unknown key there
        return Case("yaml_type", f"{rel}: {line.strip()} -> {value}", files, must)

    def key_type(self) -> Case:
        rel, line, new = self.rng.choice([
            ("stack/mercure/rules.yml", "  dicom_indexer:\n    image", "  1:\n    image"),
            ("stack/mercure/rules.yml", "  mr_completed_study:", "  5:"),
            ("stack/mercure/rules.yml", "      LOG_LEVEL: INFO", "      1: INFO"),
            ("stack/mercure/rules.yml", "      LOG_LEVEL: INFO", "      2024-01-01: INFO"),
            ("stack/mercure/rules.yml", "      LOG_LEVEL: INFO", "      null: INFO"),
            ("stack/mercure/rules.yml", "      LOG_LEVEL: INFO", "      true: INFO"),
            ("stack/mercure/rules.yml", "      LOG_LEVEL: INFO", "      ? [a, b]\n      : INFO"),
            ("stack/mercure/rules.yml", "      LOG_LEVEL: INFO", "      1.5: INFO"),
            ("stack/mercure/rules.yml", "targets: {}", "targets: {7: {type: folder}}"),
            ("stack/site.yml", "  http: 80", "  1: 80"),
            ("stack/site.yml", "  data: [proxy, gitlab", "  1: [proxy, gitlab"),
            ("stack/site.yml", "  gitlab: gitlab.localhost", "  ? {a: 1}\n  : gitlab.localhost"),
            ("stack/gitlab.yml", "  ni-dataops:\n", "  3:\n"),
            ("stack/runners.yml", f"  {self._runner}:\n", "  0x10:\n"),
            ("stack/bidsflux.stack.yml", "  gitlab_root_password:\n    generate", "  12:\n    generate"),
            ("stack/bidsflux.stack.yml", "  minio:\n", "  7:\n"),
        ])
        return Case("key_type", f"{rel}: {line.strip()} -> {new.strip()}", self._replace_line(rel, line, new), True)

    def newline(self) -> Case:
        rel, path = self.rng.choice([
            ("stack/site.yml", ("site", "name")), ("stack/site.yml", ("hosts", "gitlab")),
            ("stack/site.yml", ("images", "gitlab")), ("stack/site.yml", ("images", "mercure_tag")),
            ("stack/site.yml", ("dicom_endpoint", "ae_title")), ("stack/site.yml", ("paths", "state_dir", "mode")),
            ("stack/site.yml", ("bots", "dicom_bot")), ("stack/site.yml", ("swarm", "network", "name")),
            ("stack/site.yml", ("swarm", "network", "subnet")), ("stack/site.yml", ("health", "monitoring_allowlist", 0)),
            ("stack/site.yml", ("indexer", "session_name_tag")), ("stack/site.yml", ("images", "mercure_prefix")),
            ("stack/site.yml", ("site", "admin_email")), ("stack/site.yml", ("paths", "state_dir", "path")),
            ("stack/site.yml", ("secrets", "file")), ("stack/site.yml", ("images", "minio")),
            ("stack/gitlab.yml", ("schedules", "health", "cron")), ("stack/gitlab.yml", ("users", "dicom_bot", "token", "variable")),
            ("stack/runners.yml", ("runners", self._runner, "docker", "image")), ("stack/runners.yml", ("runners", self._runner, "tags", 0)),
            ("stack/mercure/rules.yml", ("settings", "receiver", "ae_title")),
            ("stack/mercure/docker-compose.yml", ("name",)),
        ])
        data = self._data(rel)
        node = data
        for part in path:
            node = node[part]
        suffix = self.rng.choice(["\n", "\n\n", "\r", "\x00", "\t"])
        _set(data, path, f"{node}{suffix}")
        return Case("newline", f"{rel}: {'.'.join(map(str, path))} + {suffix!r}", self._with(rel, data), True)

    def credential(self) -> Case:
        choice = self.rng.randint(0, 3)
        if choice <= 1:
            key, value = self.rng.choice([
                ("PASS", "x"), ("DB_PASS", "x"), ("CREDENTIALS", "x"), ("S3_KEY", "x"), ("SSH_KEY", "x"),
                ("APIKEY", "x"), ("DATABASE_URL", "postgres://u:pw@db/x"), ("UPSTREAM", "glpat-abcdefghijklmnopqrst"),
                ("MYSQL_PWD", "x"), ("AUTH_TOKEN", "x"), ("GITLAB_PAT", "x"), ("AWS_SECRET_ACCESS_KEY", "x"),
                ("BROKER", "amqp://guest:guest@rabbit/"), ("RUNNER", "glrt-abcdefghijklmnopqrst"), ("PASSWORD_FILE_X", "x"),
                ("PRIVATE_KEY", "x"), ("SSH_PRIVATE_KEY", "-----BEGIN OPENSSH PRIVATE KEY-----"),
            ])
            if choice == 0:
                data = self._data("stack/mercure/rules.yml")
                data["modules"]["dicom_indexer"]["environment"][key] = value
                return Case("credential", f"module environment {key}={value}", self._with("stack/mercure/rules.yml", data), True)
            data = self._data("stack/gitlab.yml")
            data["variables"][key] = {"value": value, "masked": False, "protected": False, "raw": True}
            return Case("credential", f"gitlab variable {key}={value}", self._with("stack/gitlab.yml", data), True)
        if choice == 2:
            key = self.rng.choice(["password", "token", "secret_key", "api_key", "access_token", "passwd", "secret"])
            data = self._data("stack/mercure/rules.yml")
            data["targets"] = {"t": {"type": "sftp", key: "x"}}
            return Case("credential", f"target key {key}", self._with("stack/mercure/rules.yml", data), True)
        key, value = self.rng.choice([("DB_PASS", "x"), ("APIKEY", "x"), ("DATABASE_URL", "postgres://u:pw@db/x"), ("X", "glpat-abcdefghijklmnopqrst")])
        data = self._data("stack/bidsflux.stack.yml")
        data["services"]["minio"].setdefault("environment", {})[key] = value
        return Case("credential", f"stack environment {key}={value}", self._with("stack/bidsflux.stack.yml", data), True)

    def path(self) -> Case:
        data = self._data("stack/site.yml")
        kind = self.rng.randint(0, 3)
        if kind <= 1:
            target = self.rng.choice(["state_dir", "gitlab_home", "runner_builds", "mercure_base", "dicom_incoming"])
            bad = self.rng.choice(["/", "/etc", "/srv/../../etc", "/usr", "/var", "/boot", "/proc", "/sys", "/dev",
                                   "/bin", "/lib", "/root", "/etc/bidsflux", "/usr/bin", "/srv/bidsflux/../../..",
                                   "//etc", "/etc/", "/srv/./x/..", "/var/run/docker.sock", "/home", "/sbin", "/opt",
                                   "/var/lib/docker", "/run"])
            data["paths"][target]["path"] = bad
            return Case("path", f"paths.{target}.path = {bad!r}", self._with("stack/site.yml", data), True)
        if kind == 2:
            target = self.rng.choice(["state_dir", "gitlab_home", "mercure_base"])
            bad = self.rng.choice(["0777", "777", "0776", "0703", "0757", "0666"])
            data["paths"][target]["mode"] = bad
            return Case("path", f"paths.{target}.mode = {bad}", self._with("stack/site.yml", data), True)
        home = data["paths"]["gitlab_home"]["path"]
        bad = self.rng.choice(["/tmp/secrets.env", "/var/tmp/s.env", "/dev/shm/s.env", f"{home}/config/secrets.env",
                               f"{data['paths']['mercure_base']['path']}/secrets.env", "/tmp/../tmp/s.env",
                               f"{home}/../gitlab/s.env", "/etc/secrets.env", "/"])
        data["secrets"]["file"] = bad
        return Case("path", f"secrets.file = {bad!r}", self._with("stack/site.yml", data), True)

    # -- kinds where acceptance may be right: only crashes count
    def _random_scalar(self) -> Any:
        return self.rng.choice([
            None, True, False, 0, -1, 2**70, -(2**70), 1.5, float("inf"), "", " ", "x", "{{", "{", "}", "{0}", "%s",
            "é" * 3, "\x00", "a" * 300, "10.0.0.0/8", "::1", "/", "*", "&", "?", "- x", "{{ x }}", "'", '"', "\\",
            [], {}, [1, "a"], {"a": None}, {"": ""}, [[[]]], "0x1F", "1e999", ".nan", "~", "yes", "on",
        ])

    def random_value(self) -> Case:
        rel = self.rng.choice(SITE_FILES)
        data = self._data(rel)
        paths = _paths(data)[1:]
        path = self.rng.choice(paths)
        value = self._random_scalar()
        _set(data, path, value)
        try:
            text = dump_with_modeline(self.base[rel], data)
        except (ValueError, OverflowError):
            text = self.base[rel]
        return Case("random_value", f"{rel}: {'.'.join(map(str, path))} = {value!r}"[:200], {rel: text}, False)

    def delete(self) -> Case:
        rel = self.rng.choice(SITE_FILES)
        data = self._data(rel)
        paths = [p for p in _paths(data)[1:]]
        path = self.rng.choice(paths)
        _delete(data, path)
        return Case("delete", f"{rel}: delete {'.'.join(map(str, path))}", self._with(rel, data), False)

    def text(self) -> Case:
        rel = self.rng.choice(SITE_FILES)
        text = self.base[rel]
        op = self.rng.randint(0, 3)
        if op == 0:
            cut = self.rng.randint(0, len(text))
            new = text[:cut]
        elif op == 1:
            pos = self.rng.randint(0, len(text) - 1)
            new = text[:pos] + self.rng.choice(["\t", ":", "-", "[", "{", "&a", "*a", "!", "%", "@", "`", "|", "\x00", "\ufeff", "---\n"]) + text[pos + 1:]
        elif op == 2:
            lines = text.splitlines(keepends=True)
            i, j = self.rng.randrange(len(lines)), self.rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            new = "".join(lines)
        else:
            raw = bytearray(text.encode())
            for _ in range(self.rng.randint(1, 5)):
                raw[self.rng.randrange(len(raw))] = self.rng.randrange(256)
            new = raw.decode("utf-8", errors="surrogateescape")
        return Case("text", f"{rel}: text mutation {op}", {rel: new}, False)


# ---- running one case -------------------------------------------------------------------------

_WORKDIR: Path | None = None
_BASE: dict[str, str] = {}


def prepare(case: Case) -> Path:
    """One repository copy per process, reset to the base files and then mutated: the same paths
    each time, so caches warmed in this (parent) process serve every forked child."""
    import shutil

    global _WORKDIR
    if _WORKDIR is None:
        _WORKDIR = Path(tempfile.mkdtemp(prefix="bidsflux-fuzz-"))
        atexit.register(shutil.rmtree, _WORKDIR, True)
        for part in PARTS:
            src = REPO_ROOT / part
            if src.is_dir():
                shutil.copytree(src, _WORKDIR / part)
            else:
                shutil.copy2(src, _WORKDIR / part)
        _BASE.update(base_texts(_WORKDIR))
        _warm_up(_WORKDIR)
    for rel, text in _BASE.items():
        if rel not in case.files:
            (_WORKDIR / rel).write_text(text, encoding="utf-8")
    for rel, text in case.files.items():
        (_WORKDIR / rel).write_bytes(text.encode("utf-8", errors="surrogateescape"))
    return _WORKDIR


def cleanup() -> None:
    """Remove this process's repository copy (worker processes do not run atexit handlers)."""
    import shutil

    global _WORKDIR
    if _WORKDIR is not None:
        shutil.rmtree(_WORKDIR, ignore_errors=True)
        _WORKDIR = None
        _BASE.clear()


def _warm_up(root: Path) -> None:
    from click.testing import CliRunner

    from bidsflux.cli import main

    for command in COMMANDS:
        CliRunner().invoke(main, [*command, "--root", str(root)])


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _classify(command: tuple[str, ...], exit_code: int | None, output: str, exc: BaseException | None) -> tuple[str, str]:
    if exc is not None and not isinstance(exc, SystemExit):
        if isinstance(exc, MemoryError):
            return "memory", "MemoryError"
        import traceback

        return "traceback", "".join(traceback.format_exception(exc))[-3000:]
    if "Traceback (most recent call last)" in output:
        return "traceback", output[-3000:]
    if exit_code == 0:
        return "ok", ""
    if exit_code == 2 and command[0] == "validate":
        return "traceback", "exit 2 (usage error)\n" + output[-2000:]
    if command[0] == "validate" and "--format" in command:
        try:
            found = json.loads(output)
        except ValueError:
            found = None
        if isinstance(found, list) and found and all(d.get("line", 0) >= 1 and d.get("file") for d in found):
            return "refused", ""
        return "unpositioned", output[-2000:]
    if POSITIONED.search(output):
        return "refused", ""
    return "unpositioned", output[-2000:]


def run(case: Case, commands: list[tuple[str, ...]] = COMMANDS, time_limit: float = TIME_LIMIT_S,
        memory_mb: int = MEMORY_LIMIT_MB) -> list[Outcome]:
    """Each command in a forked child of this (already imported) process, limited by RLIMIT_AS
    and killed after `time_limit`: a hang or a blow-up cannot take the runner down."""
    from click.testing import CliRunner

    from bidsflux.cli import main

    outcomes = []
    root = prepare(case)
    for command in commands:
        args = [*command, "--root", str(root)]
        rfd, wfd = os.pipe()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:  # child
            os.close(rfd)
            code = 0
            try:
                limit = _vm_size() + memory_mb * 1024 * 1024
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
                # CPU time, not wall time: the machine may be busy with other work.
                cpu = max(1, math.ceil(time_limit))
                resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
                result = CliRunner().invoke(main, args, catch_exceptions=True)
                text = result.stdout if command[0] == "validate" else result.output
                status, detail = _classify(command, result.exit_code, text, result.exception)
                payload = json.dumps({"status": status, "exit": result.exit_code, "detail": detail})
            except MemoryError:
                payload = json.dumps({"status": "memory", "exit": None, "detail": "MemoryError in runner"})
            except BaseException as exc:  # noqa: BLE001 - anything escaping CliRunner is a crash
                payload = json.dumps({"status": "traceback", "exit": None, "detail": repr(exc)[:2000]})
                code = 3
            try:
                with os.fdopen(wfd, "w") as fh:
                    fh.write(payload)
            finally:
                os._exit(code)
        os.close(wfd)
        chunks: list[bytes] = []
        deadline = start + time_limit * WALL_FACTOR
        killed = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                killed = True
                break
            ready, _, _ = select.select([rfd], [], [], left)
            if ready:
                chunk = os.read(rfd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        os.close(rfd)
        _, wait_status = os.waitpid(pid, 0)
        seconds = time.monotonic() - start
        if killed:
            outcomes.append(Outcome(command, "hang", None, seconds, f"killed after {seconds:.0f} s of wall time"))
            continue
        sig = os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else None
        if sig == signal.SIGXCPU:
            outcomes.append(Outcome(command, "hang", None, seconds, f"over {time_limit:g} s of CPU time"))
            continue
        try:
            got = json.loads(b"".join(chunks).decode())
        except ValueError:
            outcomes.append(Outcome(command, "crash", None, seconds, f"child died (signal {sig})"))
            continue
        outcomes.append(Outcome(command, got["status"], got["exit"], seconds, got["detail"]))
    return outcomes


# ---- the corpus of crashers found -------------------------------------------------------------

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"


def corpus_cases() -> list[tuple[Path, Case]]:
    return [(p, Case.from_json(json.loads(p.read_text(encoding="utf-8")))) for p in sorted(CORPUS.glob("*.json"))]


def save_to_corpus(case: Case) -> Path:
    import hashlib

    CORPUS.mkdir(exist_ok=True)
    text = json.dumps(case.to_json(), indent=1, sort_keys=True)
    if len(text) > 20_000:  # long generated inputs compress well
        text = json.dumps({**case.to_json(), "files": {k: _compress(v) for k, v in case.files.items()}}, indent=1, sort_keys=True)
    name = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = CORPUS / f"{case.kind}-{name}.json"
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _compress(text: str) -> str:
    import zlib

    return "zlib:" + base64.b64encode(zlib.compress(text.encode("utf-8", errors="surrogateescape"), 9)).decode()


def decompress(text: str) -> str:
    import zlib

    if text.startswith("zlib:"):
        return zlib.decompress(base64.b64decode(text[5:])).decode("utf-8", errors="surrogateescape")
    return text
