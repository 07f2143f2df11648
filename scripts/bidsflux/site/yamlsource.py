"""YAML files loaded within bounds (size, depth, aliases, expansion) and as plain text/number/list/map
values, with the positions of every key, so errors can name file, line and key."""

from __future__ import annotations

import copy
import datetime
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, CommentedSet, TaggedScalar
from ruamel.yaml.composer import Composer
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import MappingNode, ScalarNode
from ruamel.yaml.scalarbool import ScalarBoolean
from ruamel.yaml.scanner import RoundTripScanner

from bidsflux.diagnostics import Diagnostic, UserError, key_path
from bidsflux.site import yamlerrors


@dataclass
class Document:
    """A loaded YAML file: plain Python data plus a way back to line and column."""

    path: Path
    display: str  # the path as shown in messages (relative to the repository when possible)
    raw: Any  # ruamel round-trip tree, carries positions
    data: Any  # plain dicts/lists/scalars, what the code uses

    def locate(self, path: list[object] | tuple[object, ...]) -> tuple[int, int]:
        """1-based (line, col) of the deepest node along `path` that exists."""
        node = self.raw
        line, col = 1, 1
        for part in path:
            if isinstance(node, CommentedMap) and part in node:
                position = _key_position(node, part)
                if position is not None:
                    line, col = position[0] + 1, position[1] + 1
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
                ln, cl = node.lc.item(part)
                line, col = ln + 1, cl + 1
                node = node[part]
            else:
                break
        return line, col

    def diagnostic(self, path: list[object] | tuple[object, ...], message: str) -> Diagnostic:
        line, col = self.locate(path)
        return Diagnostic(self.display, line, col, key_path(path), message)


def _key_position(node: CommentedMap, key: object) -> tuple[int, int] | None:
    """Where `key` is written: in the map itself, or in a map merged into it with `<<:`."""
    try:
        return node.lc.key(key)
    except KeyError:
        pass
    # ruamel's merge list held (index, map) pairs in older releases and plain maps in newer ones
    for entry in getattr(node, "merge", None) or []:
        merged = entry[1] if isinstance(entry, tuple) else entry
        if isinstance(merged, CommentedMap) and key in merged:
            return _key_position(merged, key)
    return None


# What a file may cost before anything looks at its values. The site files are a few KB (the
# largest under 10 KB and 700 values), a few levels deep, with a handful of aliases; ruamel's
# round-trip loader handles about 5,000 values a second. An alias bomb is small on disk and huge
# once expanded, so aliases are counted and the expanded size computed while the file is
# composed (aliases still shared), before anything copies them.
MAX_DOCUMENT_BYTES = 256 * 1024
MAX_DEPTH = 50
MAX_ALIASES = 1000
MAX_NODES = 10_000
# GitLab CI's own tag (https://docs.gitlab.com/ci/yaml/yaml_optimization/#reference-tags).
CI_TAGS = frozenset({"!reference"})


class _Refused(MarkedYAMLError):
    """A limit of the loader, reported at the node that crossed it."""


class _BoundedScanner(RoundTripScanner):
    """Refuses deep flow nesting while scanning: the scanner looks ahead over every open '[' or
    '{' (each may start a key), so deep flow nesting costs quadratic time before any event."""

    def fetch_flow_collection_start(self, TokenClass: Any, to_push: Any) -> None:  # noqa: N803 - ruamel's name
        if len(self.flow_context) >= MAX_DEPTH:
            raise _Refused(None, None, f"nested more than {MAX_DEPTH} levels deep", self.reader.get_mark())
        super().fetch_flow_collection_start(TokenClass, to_push)


class _BoundedComposer(Composer):
    """ruamel's composer counting aliases and the size the document has once aliases are expanded."""

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader=loader)
        self._sizes: dict[int, int] = {}
        self._aliases = 0
        self._expanded = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.parser.check_event(AliasEvent):
            event = self.parser.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:
                self._aliases += 1
                if self._aliases > MAX_ALIASES:
                    raise _Refused(None, None, f"more than {MAX_ALIASES} aliases", event.start_mark)
                size = self._sizes.get(id(target))
                if size is None:
                    raise _Refused(None, None, f"alias *{event.anchor} refers to a value that contains it", event.start_mark)
                self._count(size, event.start_mark, f"alias *{event.anchor}")
            return super().compose_node(parent, index)
        if self.depth + 1 > MAX_DEPTH:
            event = self.parser.peek_event()
            raise _Refused(None, None, f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        node = super().compose_node(parent, index)
        if isinstance(node, ScalarNode):
            size = 1
        elif isinstance(node, MappingNode):
            size = 1 + sum(self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value)
        else:
            size = 1 + sum(self._sizes.get(id(v), 1) for v in node.value)
        self._sizes[id(node)] = size
        self._count(1, node.start_mark, "")
        return node

    def _count(self, size: int, mark: Any, what: str) -> None:
        self._expanded += size
        if self._expanded > MAX_NODES:
            via = f" ({what} expands to {size} values)" if what else ""
            raise _Refused(None, None, f"more than {MAX_NODES} values once aliases are expanded{via}", mark)


def _type_name(value: Any) -> str:
    """What YAML made of a value, in words a person recognises."""
    if isinstance(value, datetime.datetime):
        return "a timestamp"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, (bytes, bytearray)):
        return "binary data (!!binary)"
    if isinstance(value, CommentedSet):
        return "a set (!!set)"
    if isinstance(value, TaggedScalar):
        return f"a value tagged {value.tag.value if hasattr(value.tag, 'value') else value.tag}"
    if value is None:
        return "null"
    if isinstance(value, (bool, ScalarBoolean)):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _tag(node: Any) -> str | None:
    tag = getattr(node, "tag", None)
    value = getattr(tag, "value", tag)
    return value if isinstance(value, str) and value.startswith("!") and not value.startswith("!!") else None


def to_plain(node: Any, problems: list[tuple[list[object], str]] | None = None, path: list[object] | None = None,
             tags: frozenset[str] = frozenset()) -> Any:
    """Strip ruamel's wrapper types so schema checks and code see ordinary values. Keys that are
    not text and values YAML typed as dates, binary, sets or custom tags are listed in `problems`
    (path, message) and left out."""
    problems = problems if problems is not None else []
    path = path or []
    tag = _tag(node)
    if tag is not None and tag not in tags:
        problems.append((path, f"the tag {tag} is not supported here; write a plain value"))
        return None
    if isinstance(node, CommentedSet):
        problems.append((path, "is a set (!!set); write a list"))
        return None
    if isinstance(node, dict):
        out: dict[Any, Any] = {}
        for k, v in node.items():
            if not isinstance(k, str):
                shown = "[" + ", ".join(map(str, k)) + "]" if isinstance(k, tuple) else str(k)
                problems.append(([*path, k], f"the key {shown} is {_type_name(k)}; keys must be text (quote it: '{shown}')"))
                continue
            out[str(k)] = to_plain(v, problems, [*path, k], tags)
        return out
    if isinstance(node, list):
        return [to_plain(v, problems, [*path, i], tags) for i, v in enumerate(node)]
    if isinstance(node, ScalarBoolean):  # an anchored boolean is an int subclass in ruamel
        return bool(node)
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    if node is None:
        return None
    if isinstance(node, TaggedScalar) and _tag(node) is None and str(getattr(node.tag, "value", node.tag)).endswith(":str"):
        return str(node.value or "")
    problems.append((path, f"is {_type_name(node)}, which no setting takes; quote it if you mean text"))
    return None


def display_path(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(path.resolve().relative_to(root.resolve()))
        except ValueError:
            pass
    return str(path)


def load(path: Path, root: Path | None = None, tags: frozenset[str] = frozenset()) -> Document:
    """Load one YAML file within the limits above; a syntax error, a limit crossed, a key that is
    not text or a YAML-typed value becomes a UserError with its position. `tags`: custom tags
    allowed (CI files: !reference)."""
    shown = display_path(path, root)
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise UserError("", [Diagnostic(shown, 1, 1, "", f"file is {size} bytes; the limit is {MAX_DOCUMENT_BYTES} bytes")])
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("", [Diagnostic(shown, 0, 0, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError("", [Diagnostic(shown, 1, 1, "", f"cannot read: {exc}")]) from None
    return loads(text, path, shown, tags)


def loads(text: str, path: Path, shown: str, tags: frozenset[str] = frozenset()) -> Document:
    """`load` of text already read (see load)."""
    if len(text) > MAX_DOCUMENT_BYTES:
        raise UserError("", [Diagnostic(shown, 1, 1, "", f"document is {len(text)} characters; the limit is {MAX_DOCUMENT_BYTES}")])
    raw, data, problems, error = _parse(text, tags)
    if error is not None:
        line, col, message = error
        raise UserError("", [Diagnostic(shown, line, col, "", message)])
    # Each caller gets its own copy of the data; the position tree is only read.
    doc = Document(path=path, display=shown, raw=raw, data=copy.deepcopy(data))
    if problems:
        raise UserError("", [doc.diagnostic(p, message) for p, message in problems])
    return doc


@lru_cache(maxsize=32)
def _parse(text: str, tags: frozenset[str]) -> tuple[Any, Any, tuple[tuple[list[object], str], ...], tuple[int, int, str] | None]:
    """(position tree, plain data, value problems, syntax error as (line, col, message)); cached,
    since one command loads the same files more than once (validate, then the command itself)."""
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    yaml.Composer = _BoundedComposer
    yaml.Scanner = _BoundedScanner
    try:
        raw = yaml.load(text)
    except _Refused as exc:
        mark = exc.problem_mark
        return None, None, (), (mark.line + 1, mark.column + 1, f"YAML limit: {exc.problem}")
    except MarkedYAMLError as exc:
        line, col, problem = yamlerrors.locate(text, exc)
        return None, None, (), (line, col, f"YAML syntax: {problem}")
    except YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid YAML"
        return None, None, (), (1, 1, f"YAML syntax: {first}")
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # ruamel raises plain errors for a few malformed scalars (dates, huge numbers)
        return None, None, (), (1, 1, f"YAML value: {str(exc)[:200]}")
    problems: list[tuple[list[object], str]] = []
    data = to_plain(raw, problems, [], tags)
    return raw, data, tuple(problems), None
