"""YAML files loaded with the positions of every key, so errors can name file, line and key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

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


def to_plain(node: Any) -> Any:
    """Strip ruamel's wrapper types so schema checks and code see ordinary values."""
    if isinstance(node, dict):
        return {str(k) if not isinstance(k, (int, bool)) else k: to_plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [to_plain(v) for v in node]
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def display_path(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(path.resolve().relative_to(root.resolve()))
        except ValueError:
            pass
    return str(path)


def load(path: Path, root: Path | None = None) -> Document:
    """Load one YAML file; a syntax error becomes a UserError with its position."""
    shown = display_path(path, root)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("", [Diagnostic(shown, 0, 0, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError("", [Diagnostic(shown, 0, 0, "", f"cannot read: {exc}")]) from None
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        raw = yaml.load(text)
    except MarkedYAMLError as exc:
        line, col, problem = yamlerrors.locate(text, exc)
        raise UserError("", [Diagnostic(shown, line, col, "", f"YAML syntax: {problem}")]) from None
    except YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid YAML"
        raise UserError("", [Diagnostic(shown, 1, 1, "", f"YAML syntax: {first}")]) from None
    except (ValueError, TypeError, RecursionError) as exc:
        # ruamel raises plain errors for a few malformed scalars (dates, huge numbers)
        raise UserError("", [Diagnostic(shown, 1, 1, "", f"YAML value: {exc}")]) from None
    return Document(path=path, display=shown, raw=raw, data=to_plain(raw))
