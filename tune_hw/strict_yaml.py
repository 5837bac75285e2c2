"""YAML for text tune_hw did not write: study files, `--set` values, a run's study.yaml.

On top of PyYAML's safe loader (plain data types only) it refuses what a study never needs and
an attacker or a typo can use: files over 1 MiB, text that is not UTF-8, anchors and aliases
(a "billion laughs" expands a few lines into gigabytes), explicit tags (`!!python/...`,
`!!binary`), duplicate keys (the second silently won), keys that are not strings and, unless
asked to allow them, null values. Every problem is one `UserError` that names where it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tune_hw.errors import UserError

MAX_BYTES = 1 << 20  # the biggest shipped study is a few KiB
MERGE_TAG = "tag:yaml.org,2002:merge"


class Refused(yaml.MarkedYAMLError):
    """Valid YAML that a study must not contain; its message already says the fix."""


class StrictLoader(yaml.SafeLoader):
    """SafeLoader without anchors, aliases, explicit tags, duplicate or non-string keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise Refused(
                None, None, "anchors and aliases (&name, *name) are not accepted: write the "
                "value out", event.start_mark)
        if getattr(event, "tag", None) is not None:  # only written tags: !!str, !!python/...
            raise Refused(
                None, None, f"tags like {event.tag} are not accepted: only plain values "
                "(numbers, strings, lists, mappings)", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                raise Refused(
                    None, None, "merge keys (<<) are not accepted", key_node.start_mark)
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise Refused(
                    None, None, f"key {key!r} is not a string: quote it", key_node.start_mark)
            if key in seen:
                raise Refused(
                    None, None, f"duplicate key {key!r}: keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _NoAliasDumper(yaml.SafeDumper):
    """Writes a value shared by two keys twice, so StrictLoader reads it back."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(data: Any) -> str:
    """YAML text that `load` accepts (no anchors or aliases), keys in their given order."""
    return yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False)


def load(text: str | bytes, where: str, allow_null: bool = False) -> Any:
    """Parse untrusted YAML text; `where` names it in the one-line error."""
    if isinstance(text, bytes):
        text = _decode(text, where)
    if len(text.encode("utf-8")) > MAX_BYTES:
        raise UserError(f"{where}: is over {MAX_BYTES // 1024} KiB: a study is a few lines; "
                        "check that this is the file you meant")
    try:
        value = yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        fix = "" if isinstance(exc, Refused) else "; fix the syntax"
        raise UserError(f"{where}: invalid YAML{at}: {problem}{fix}") from None
    if not allow_null:
        _refuse_null(value, where, "")
    return value


def read(path: Path, allow_null: bool = False) -> Any:
    """Read and parse a YAML file, refusing it unread when it is too big."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise UserError(f"{path}: is {size / 2**20:.1f} MiB, over the {MAX_BYTES // 1024} "
                            "KiB a study file may have: check that this is the file you meant")
        raw = path.read_bytes()[:MAX_BYTES + 1]  # a local file or an ObjectPath alike
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return load(raw, str(path), allow_null)


def looks_numeric(text: str) -> bool:
    """Text YAML read as a string that the writer meant as a number (YAML 1.1 reads `1e-4`,
    without a dot, as text)."""
    try:
        float(text)
        return True
    except ValueError:
        return False


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{where}: is not UTF-8 text (byte {exc.start}): save it as UTF-8") \
            from None


def _refuse_null(value: Any, where: str, key: str) -> None:
    """A null (`key:` with nothing after it, `~`, `null`) is a value left out by mistake."""
    if value is None:
        if not key:
            raise UserError(f"{where}: is empty (null): give it a value")
        raise UserError(f"{where}: {key} is null (empty): give it a value or remove the key")
    if isinstance(value, dict):
        for k, v in value.items():
            _refuse_null(v, where, f"{key}.{k}" if key else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _refuse_null(v, where, f"{key}[{i}]")
