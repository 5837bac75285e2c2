"""The run directory, checked before Ray starts: a new run must not overwrite anything, a
resumed run must exist, be trusted, be whole and match the study, and the storage path must be
writable. Nothing here changes what it checks.
"""

from __future__ import annotations

import contextlib
import os
import pickletools
import tempfile
from pathlib import Path
from typing import Any

from tune_hw import layout, ray_files, results, storage, strict_yaml
from tune_hw.errors import UserError
from tune_hw.storage import ObjectPath

GROWABLE = ("search", "num_samples")  # the one study key a --resume may change: raise it


def check_run_dir(run_dir: Path | ObjectPath, resume: bool, resolved: dict[str, Any],
                  storage_path: Path | ObjectPath) -> None:
    """A new run must not overwrite anything; a resumed run must exist, be trusted, be whole
    and match the study (which may only raise search.num_samples: the run grows)."""
    if not resume:
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise UserError(f"run {run_dir.name!r} already exists in {run_dir.parent}: add "
                            "--resume to continue it, or choose another --name")
        return
    if not run_dir.is_dir():
        raise UserError(f"nothing to resume: no run {run_dir.name!r} under {run_dir.parent}; "
                        "check --name and --storage-path, or drop --resume to start it")
    if not isinstance(run_dir, ObjectPath):  # a bucket's trust is who may write the prefix
        check_trusted(run_dir, storage_path)
    check_restorable(run_dir)
    stored = results.read_study(run_dir)
    current = strict_yaml.load(strict_yaml.dump(resolved), "the study", allow_null=True)
    check_growth(run_dir, stored, current)
    stored, current = _without_growth(stored), _without_growth(current)
    differ = sorted(k for k in current if k != "run_name" and stored.get(k) != current[k])
    if differ:
        raise UserError(f"run {run_dir.name!r} was made with a different study (differs in "
                        f"{differ}{_fuse_hint(stored, current)}): resume with the same study, "
                        "--quick and --set options, or start a new --name")


def _fuse_hint(stored: dict[str, Any], current: dict[str, Any]) -> str:
    """What to add when search.fuse differs (a run made before `auto` became the default)."""
    old, new = ((s.get("search") or {}).get("fuse", "off") for s in (stored, current))
    return f"; its search.fuse was {old!r}, now {new!r}: add --fuse {old}" if old != new else ""


def check_growth(run_dir: Path | ObjectPath, stored: dict[str, Any], current: dict[str, Any]
                 ) -> None:
    """A resumed run may grow (a larger search.num_samples), never shrink."""
    section, key = GROWABLE
    old, new = (s.get(section, {}).get(key) if isinstance(s.get(section), dict) else None
                for s in (stored, current))
    if isinstance(old, int) and isinstance(new, int) and new < old:
        raise UserError(f"run {run_dir.name!r} has search.num_samples {old}: --resume it with "
                        f"--num-samples {old} or more (a run grows, it never shrinks)")


def _without_growth(study: dict[str, Any]) -> dict[str, Any]:
    section, key = GROWABLE
    if not isinstance(study.get(section), dict):
        return study
    return {**study, section: {k: v for k, v in study[section].items() if k != key}}


def check_trusted(run_dir: Path, storage: Path) -> None:
    """Ray's restore unpickles files of the run: restore only files this user owns, in
    directories (from the storage path down to each trial's) that nobody else can write."""
    above = [p for p in run_dir.parents if p == storage or storage in p.parents]
    trials = [p for p in run_dir.iterdir() if p.is_dir()]
    for path in (*reversed(above), run_dir, *trials, *layout.restore_inputs(run_dir)):
        info = path.stat()
        problem = (f"owned by user id {info.st_uid}, not you" if info.st_uid != os.getuid()
                   else f"writable by others (mode {info.st_mode & 0o777:o})"
                   if info.st_mode & 0o022 else None)
        if problem:
            raise UserError(f"refusing to resume from {path}: it is {problem}, and restoring "
                            "the run would unpickle its files; resume only runs you made in "
                            "directories only you can write (chmod -R go-w), or start a new "
                            "--name")


def check_restorable(run_dir: Path) -> None:
    """Refuse a damaged run before Ray reads it: Ray would log a traceback, start the
    experiment over, and the new trials alone would replace the old results."""
    if ray_files.read_experiment_state(run_dir) is None:  # its own error when damaged
        raise UserError(f"nothing to resume: run {run_dir.name!r} in {run_dir.parent} has no "
                        f"Ray experiment state ({layout.EXPERIMENT_STATE}); start it again "
                        "under a new --name")
    pickles = [run_dir / layout.TUNER_STATE,
               *(layout.newest(run_dir, glob) for glob in layout.PICKLED_STATES)]
    for path in pickles:
        if path is not None and not _whole_pickle(path):
            raise UserError(f"{path} is missing or damaged (cut short): the run is not resumed "
                            "and nothing was changed; restore it from a backup, or start a "
                            "new --name")


def _whole_pickle(path: Path) -> bool:
    """True when `path` is a complete pickle; its opcodes are walked, never executed."""
    try:
        for _ in pickletools.genops(path.read_bytes()):
            pass
    except (OSError, ValueError, EOFError):
        return False
    return True


def check_writable(storage_path: Path | ObjectPath, study_dir: Path | ObjectPath) -> None:
    """Runs can be written under the storage path: make the study's directory and a probe
    file, before Ray starts, then remove what the probe made (object storage: the bucket is
    there and takes a probe object)."""
    if isinstance(storage_path, ObjectPath):
        storage.probe(storage_path)
        return
    _check_local_writable(storage_path, study_dir)


def _check_local_writable(storage: Path, study_dir: Path) -> None:
    made = [p for p in (study_dir, *study_dir.parents) if not p.exists()]  # deepest first
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=study_dir).close()
    except OSError as exc:
        raise UserError(f"--storage-path {storage}: cannot write runs into {study_dir} "
                        f"({exc.strerror or exc}); give a directory you can write") from None
    finally:
        for path in made:
            with contextlib.suppress(OSError):
                path.rmdir()
