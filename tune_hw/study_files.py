"""A study file read as it is written: where it is, its YAML (strict loader), its keys, and the
dotted --set / quick-profile overrides applied to it; `studies` validates the result.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from tune_hw import strict_yaml
from tune_hw.errors import StudyError, UserError
from tune_hw.layout import STUDY_DIR

SECTIONS = ("dataset", "model", "train")
TOP_KEYS = {"description", *SECTIONS, "space", "search", "scheduler", "resources", "failure",
            "quick", "claims", "log"}


def study_path(name_or_path: str) -> Path:
    """`lr_batch` -> search_spaces/lr_batch.yaml; a path is taken as is."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UserError(f"study file {path} does not exist")
        return path
    path = STUDY_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in STUDY_DIR.glob("*.yaml"))
        raise UserError(f"unknown study {name_or_path!r}: use one of {known} or a path to a "
                        "YAML file")
    return path


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a study file with the strict loader; every problem is one line naming the file."""
    try:
        raw = strict_yaml.read(path)
    except UserError as exc:
        raise StudyError(str(exc)) from None
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: a study file must be a mapping of keys, got "
                         f"{type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], path: Path) -> dict:
    """Set dotted keys (`train.epochs`, `search.num_samples`, `num_samples`) in a raw study."""
    raw = copy.deepcopy(raw)
    for key, value in overrides.items():
        key = "search.num_samples" if key == "num_samples" else key
        section, _, name = key.partition(".")
        settable = TOP_KEYS - {"description", "quick", "claims"}
        if section not in settable or not name:
            raise StudyError(f"{path}: cannot set {key!r}: use section.key with a section of "
                             f"{sorted(settable)}")
        if section == "space":
            raw.setdefault("space", {})[name] = value
        else:
            target = raw.setdefault(section, {})
            if not isinstance(target, dict):
                raise StudyError(f"{path}: {section} must be a mapping")
            target[name] = value
            if section != "search":  # a fixed value replaces a search over the same key
                (raw.get("space") or {}).pop(key, None)
    return raw
