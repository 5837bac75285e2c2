"""The user's terminal while Ray runs: file descriptors 1 and 2 go to the run's driver.log, so
everything Ray, its workers and its daemons print lands there, and tune_hw's own lines (the
progress display, warnings, the best trial) reach the real terminal through a kept copy.

Redirecting the descriptors, not `sys.stdout`, is what catches Ray's C++ core worker, the lines
the log monitor forwards from the workers, and the processes Ray starts (they inherit them).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from tune_hw import layout

_SAVED: list[int] = []  # dups of the real stdout and stderr while redirected
_SINK: list[Callable[[str], None]] = []  # a live display that prints lines above itself
_CLOSE: list[Callable[[], None]] = []  # how to end the display that holds the terminal


@contextlib.contextmanager
def to_log(path: Path, enabled: bool = True) -> Iterator[None]:
    """While inside, fds 1 and 2 append to `path`; the real ones come back on the way out."""
    if not enabled or _SAVED:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    _SAVED[:] = saved
    try:
        yield
    finally:
        for close in list(_CLOSE):
            close()
        _CLOSE.clear()
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        _SAVED.clear()


@contextlib.contextmanager
def run_log(run_dir: Path, enabled: bool = True) -> Iterator[Callable[[], None]]:
    """fds 1 and 2 append to <run_dir>/driver.log while inside (a resumed run adds to its log).

    A new run's directory is made only once its checks pass (a failed check leaves nothing,
    so the same --name works next time): until then the log is a hidden file next to it, and
    the `settle()` this yields, called once the run directory exists, moves it in."""
    final = run_dir / layout.DRIVER_LOG
    staged = final if run_dir.is_dir() else run_dir.parent / f".{run_dir.name}.{final.name}"
    made = [p for p in (run_dir.parent, *run_dir.parent.parents) if not p.exists()]
    if enabled:
        run_dir.parent.mkdir(parents=True, exist_ok=True)

    def settle() -> None:
        if staged != final and staged.exists():
            staged.replace(final)  # the open descriptors follow the file

    try:
        with to_log(staged, enabled):
            yield settle
    finally:
        if staged != final:  # the run never got its directory: leave nothing behind
            staged.unlink(missing_ok=True)
            for path in made:  # deepest first; one that now holds the run stays
                with contextlib.suppress(OSError):
                    path.rmdir()


def redirected() -> bool:
    """Whether fds 1 and 2 go to a log file now."""
    return bool(_SAVED)


def open_stream(err: bool = False) -> TextIO:
    """A new line-buffered text stream on the real stdout (or stderr); the caller closes it."""
    fd = _SAVED[int(err)] if _SAVED else (2 if err else 1)
    return os.fdopen(os.dup(fd), "w", buffering=1)


def set_sink(write: Callable[[str], None] | None,
             close: Callable[[], None] | None = None) -> None:
    """From now on `say` and `warn` print through `write` (a live display keeps its place on
    the screen; None: straight to the terminal); `close` ends that display when the
    redirect ends first (an interrupted search never tells its callbacks)."""
    _SINK[:] = [write] if write else []
    _CLOSE[:] = [close] if close else []


def say(line: str, err: bool = False) -> None:
    """One line on the user's terminal, whether or not Ray's output goes to driver.log."""
    if _SINK:
        _SINK[-1](line)
        return
    if not _SAVED:
        print(line, file=sys.stderr if err else sys.stdout, flush=True)
        return
    with open_stream(err) as stream:
        stream.write(line + "\n")


def warn(line: str) -> None:
    """A warning the user must act on: one line on the real stderr."""
    say(line, err=True)
