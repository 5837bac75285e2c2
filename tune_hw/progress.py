"""The search's progress on the user's terminal, as a Tune callback on the driver.

It counts tune_hw trials (finished, running, pending of the study's total; completed,
early-stopped, diverged, error), shows the best validation score so far with the trial's
searched values, the elapsed time and an estimate of the time left, and a short table of the
top trials at most every 30 s. On a terminal it is one display updated in place (rich); piped,
a plain line at most every `every_s` seconds. Every result is read through
`ray_files.member_rows`, so a Tune trial that trains several tune_hw trials counts as those.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ray.tune import Callback

from tune_hw import layout, ray_files, results, terminal
from tune_hw.studies import Study

ENDED = ("TERMINATED", "ERROR")  # Tune's statuses of a trial that will not run again
STATUSES = ("completed", "early_stopped", "diverged", "error")
TOP_TRIALS = 5
REDRAW_S = 0.5  # the live display's shortest interval between recomputations


@dataclass
class Member:
    """One tune_hw trial as the driver has seen it: its Tune trial, config and reports."""

    tune_id: str
    config: dict[str, Any]
    by_epoch: dict[int, dict[str, Any]] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)

    def left(self) -> bool:
        """Whether it left a group that trains on (stopped, diverged or done before it)."""
        return self.last.get(ray_files.MEMBER_STATUS_KEY) in ray_files.MEMBER_ENDED

    def rows(self) -> list[dict[str, Any]]:
        """Its reports in epoch order, a final report without an epoch (an error) last."""
        tail = [self.last] if self.last and self.last.get("epoch") is None else []
        return [self.by_epoch[e] for e in sorted(self.by_epoch)] + tail

    def status(self, tune_status: str) -> str:
        """THE status of a trial (results.trial_status), once Tune has ended its trial."""
        record = results.TrialRecord(
            trial_id="", config=self.config, rows=self.rows(), ended=True,
            error="trial failed" if tune_status == "ERROR" else None)
        return results.trial_status(record, results.epoch_rows(record))


@dataclass
class View:
    """What the display shows at one moment."""

    done: int
    running: int
    pending: int
    by_status: dict[str, int]
    best: tuple[float, str, dict[str, Any]] | None  # score, trial id, searched values
    eta_s: float | None


class Progress(Callback):
    """The progress display of one search (pickled with the Tuner: live handles are dropped)."""

    _live = ("_out", "_rich", "_members", "_seen", "_done", "_t0", "_epochs", "_last",
             "_table_last")

    def __init__(self, study: Study, total: int, max_epochs: int, every_s: float = 20.0,
                 table_every_s: float = 30.0):
        self.study, self.total, self.max_epochs = study, total, max_epochs
        self.every_s, self.table_every_s = every_s, table_every_s
        for name in self._live:
            setattr(self, name, None)

    def __getstate__(self) -> dict[str, Any]:
        return {k: (None if k in self._live else v) for k, v in self.__dict__.items()}

    # -- Tune's hooks
    def setup(self, **info: Any) -> None:
        self._out = terminal.open_stream()
        self._members, self._seen, self._done = {}, set(), set()
        self._t0, self._epochs, self._last, self._table_last = time.monotonic(), 0, None, None
        if self._out.isatty():
            self._rich = LiveDisplay(self._out)
            terminal.set_sink(self._rich.print, self.close)
        else:
            terminal.set_sink(None, self.close)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self._absorb(trial, result)
        self._epochs += 1
        self._refresh(trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._done.add(trial.trial_id)
        terminal.warn(f"trial {trial.trial_id} failed: {_last_error_line(trial)} "
                      "(the traceback is in driver.log)")
        self._refresh(trials)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._refresh(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._done.add(trial.trial_id)
        self._refresh(trials)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._refresh(trials)  # keeps the elapsed time and the plain lines on schedule

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._refresh(trials, final=True)
        self.close()

    def close(self) -> None:
        """Stop the live display and give the terminal back (also on an interrupt)."""
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
        if self._out is not None:
            terminal.set_sink(None)
            self._out.close()
            self._out = None

    # -- what the driver knows
    def _absorb(self, trial: Any, result: dict[str, Any]) -> None:
        for trial_id, config, row in ray_files.member_rows(trial.trial_id, trial.config, result):
            member = self._members.setdefault(trial_id, Member(trial.trial_id, config))
            epoch = row.get("epoch")
            if isinstance(epoch, int) and not isinstance(epoch, bool):
                member.by_epoch[epoch] = row
            member.last = row

    def _seed(self, trials: list) -> None:
        """Trials of an earlier run (a resume) arrive with no results here: read their rows."""
        for trial in trials:
            if trial.trial_id in self._seen:
                continue
            self._seen.add(trial.trial_id)
            if trial.status in ENDED:  # ended in an earlier session
                self._done.add(trial.trial_id)
            path = Path(trial.path) if trial.path else None
            for row in ray_files.trial_rows(path) if path and path.is_dir() else []:
                self._absorb(trial, row)

    def view(self, trials: list) -> View:
        """Counts, the best trial and the time left, from Tune's trials and their reports."""
        self._seed(trials)
        members: dict[str, list[Member]] = {}
        for member in self._members.values():
            members.setdefault(member.tune_id, []).append(member)
        by_status, running, todo = dict.fromkeys(STATUSES, 0), 0, 0
        for trial in trials:
            group = members.get(trial.trial_id, [])
            # Tune also ends the trials it stops at an interrupt: those are not done
            if trial.status in ENDED and trial.trial_id in self._done:
                for status in [m.status(trial.status) for m in group] or ["error"]:
                    by_status[status] += 1
                continue
            for member in (m for m in group if m.left()):  # its group goes on without it
                by_status[member.status("TERMINATED")] += 1
            live = [m for m in group if not m.left()]
            if trial.status == "RUNNING":
                running += len(live) if group else 1
            todo += sum(max(self._target(m) - max(m.by_epoch, default=0), 0) for m in live)
            todo += 0 if group else self.max_epochs
        known = sum(max(len(members.get(t.trial_id, [])), 1) for t in trials)
        todo += max(self.total - known, 0) * self.max_epochs  # an upper bound under ASHA
        done = sum(by_status.values())
        elapsed = time.monotonic() - self._t0
        eta = elapsed / self._epochs * todo if self._epochs else None
        return View(done, running, max(self.total - done - running, 0),
                    {k: v for k, v in by_status.items() if v}, self._best(), eta)

    def _target(self, member: Member) -> int:
        return int(member.config.get("train.epochs") or self.max_epochs)

    def _ranked(self) -> list[tuple[float, str, dict[str, Any]]]:
        """(score, trial id, searched values) of every trial with a healthy epoch, best first."""
        ranking = self.study.ranking
        scored = []
        for position, (trial_id, member) in enumerate(self._members.items()):
            best = ranking.best_epoch(member.rows())
            if best is not None:
                key = ranking.key(best[ranking.metric], best.get(ranking.tie_metric), position)
                scored.append((key, float(best[ranking.metric]), trial_id,
                               self.study.searched(member.config)))
        return [entry[1:] for entry in sorted(scored, key=lambda s: s[0])]

    def _best(self) -> tuple[float, str, dict[str, Any]] | None:
        ranked = self._ranked()
        return ranked[0] if ranked else None

    # -- drawing
    def _refresh(self, trials: list, final: bool = False) -> None:
        if self._out is None:
            return
        now = time.monotonic()
        table_due = final or self._table_last is None or now - self._table_last >= \
            self.table_every_s
        if self._rich is not None:
            if not final and self._last is not None and now - self._last < REDRAW_S:
                return  # Tune calls on_step_end many times a second
            self._last = now
            view = self.view(trials)
            if table_due and len(self._ranked()) > 1:
                self._table_last = now
                self._rich.print("\n".join(self.top_table()))
            self._rich.update(self.total, view, status_line(view, now - self._t0),
                              best_line(view, self.study.ranking.metric))
            return
        if not final and self._last is not None and now - self._last < self.every_s:
            return
        self._last = now
        view = self.view(trials)
        best = best_line(view, self.study.ranking.metric)
        self._out.write(f"[{fmt_s(now - self._t0)}] {status_line(view, now - self._t0)}"
                        + (f" | {best}" if best else "") + "\n")
        if table_due and len(self._ranked()) > 1:
            self._table_last = now
            self._out.write("".join(f"    {line}\n" for line in self.top_table()))

    def top_table(self, n: int = TOP_TRIALS) -> list[str]:
        """The top trials: id, searched values and the study's metric, as aligned columns."""
        ranked = self._ranked()[:n]
        keys = list(dict.fromkeys(k for _, _, searched in ranked for k in searched))
        head = ["trial", *keys, self.study.ranking.metric]
        rows = [[trial_id, *(fmt_value(searched.get(k, "")) for k in keys), f"{score:.4f}"]
                for score, trial_id, searched in ranked]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                for r in [head, *rows]]


class LiveDisplay:
    """rich's live display on the terminal: a bar with the counts, and the best trial below."""

    def __init__(self, out: TextIO):
        from rich.console import Console  # rich only where a terminal shows it
        from rich.live import Live

        self._content: Any = ""
        # redirect_stdout/stderr=False: rich would otherwise swap sys.stdout and sys.stderr
        # for proxies printing on the terminal, bringing back every line driver.log holds
        self._live = Live(console=Console(file=out, force_terminal=True, highlight=False),
                          get_renderable=lambda: self._content, refresh_per_second=2,
                          redirect_stdout=False, redirect_stderr=False, transient=False)
        self._live.start()

    def update(self, total: int, view: View, status: str, best: str) -> None:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        row = Table.grid(padding=(0, 1))
        row.add_row(ProgressBar(total=max(total, 1), completed=view.done, width=30),
                    Text(status, no_wrap=True, overflow="ellipsis"))
        self._content = Group(row, Text(best, no_wrap=True, overflow="ellipsis")) if best \
            else row
        self._live.refresh()

    def print(self, line: str) -> None:
        """A line above the display, which stays at the bottom."""
        self._live.console.print(line, markup=False, highlight=False)

    def stop(self) -> None:
        self._live.stop()


def status_line(view: View, elapsed_s: float) -> str:
    """trials 3/8 done | 2 running, 3 pending | 2 completed, 1 early_stopped | elapsed, ETA."""
    counts = ", ".join(f"{n} {status}" for status, n in view.by_status.items())
    eta = "?" if view.eta_s is None else f"~{fmt_s(view.eta_s)}"
    return (f"trials {view.done}/{view.done + view.running + view.pending} done | "
            f"{view.running} running, {view.pending} pending"
            + (f" | {counts}" if counts else "") + f" | elapsed {fmt_s(elapsed_s)}, ETA {eta}")


def best_line(view: View, metric: str) -> str:
    """best val_acc 0.8123 (trial 3f2a_00001): train.lr=0.0123 train.batch_size=16."""
    if view.best is None:
        return ""
    score, trial_id, searched = view.best
    values = " ".join(f"{k}={fmt_value(v)}" for k, v in searched.items())
    return f"best {metric} {score:.4f} (trial {trial_id}): {values}".rstrip(": ")


def fmt_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def fmt_s(seconds: float) -> str:
    """1h02m, 3m05s, 42s."""
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    if hours:
        return f"{hours}h{rest // 60:02d}m"
    return f"{rest // 60}m{rest % 60:02d}s" if rest >= 60 else f"{rest}s"


def _last_error_line(trial: Any) -> str:
    """The last line of the trial's error.txt (Ray's copy on the driver, or the run's)."""
    paths = [Path(p) for p in (trial.error_file,
                               trial.path and Path(trial.path, layout.ERROR_FILE)) if p]
    for path in paths:
        lines = path.read_text(errors="replace").strip().splitlines() if path.is_file() else []
        if lines:
            return lines[-1]
    return "no error text stored"
