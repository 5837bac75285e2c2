"""Reproduce every study of search_spaces/: run each search, write each report, and one index
of every study's claims and verdicts.

    python -m tune_hw.reproduce --quick                        # CI-sized profiles, minutes
    python -m tune_hw.reproduce                                # the full studies (35 min on 2 CPUs)
    python -m tune_hw.reproduce --quick --studies deep,epochs  # a subset
    python -m tune_hw.reproduce --report-only                  # re-index the runs as they are
    python -m tune_hw.reproduce --storage-path /shared/runs --out reports/reproduce

Each study's run is <storage-path>/<study>/full (quick: .../quick), the names `transfer`'s
`weights: run:pretrain/full` expects; a study that `run:`s another runs after it. A finished
run is reported again, not rerun (delete its directory to run it afresh); an interrupted one
is continued with --resume. The index is <out>/index.html, <out>/index.md (a Markdown table)
and <out>/summary.json: per study its question, each claim with its verdict, effect and 95%
interval, the report's link and the search's wall time (summed over the reproduce sessions
that searched it: <run>/reproduce.json); each study's report is <out>/<study>/.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from tune_hw import layout, report, search
from tune_hw.errors import ArgumentParser, UserError
from tune_hw.layout import DEFAULT_STORAGE, STUDY_DIR
from tune_hw.studies import load_study

DEFAULT_OUT = Path("reports") / "reproduce"
UNFINISHED = ("running", "pending")  # trials.parquet statuses of an interrupted search
INTERRUPTED = 130  # search's exit code after Ctrl-C


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m tune_hw.reproduce",
                            description="Run every study, report each, index the verdicts.")
    parser.add_argument("--quick", action="store_true", help="use each study's quick profile")
    parser.add_argument("--storage-path", default=DEFAULT_STORAGE,
                        help=f"where runs go (default ./{DEFAULT_STORAGE})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"reports and the index (default {DEFAULT_OUT})")
    parser.add_argument("--studies", help="comma-separated subset of the studies (default all)")
    parser.add_argument("--bootstrap", type=int, default=None,
                        help="bootstrap resamples of each report (default the report's)")
    parser.add_argument("--report-only", action="store_true",
                        help="search nothing: report the runs as they are (an interrupted one "
                             "as far as it got)")
    return parser.parse_args(argv)


def study_names(subset: str | None) -> list[str]:
    """The studies to run, each after the studies whose runs it loads (`run:NAME/...`)."""
    shipped = sorted(p.stem for p in STUDY_DIR.glob("*.yaml"))
    names = shipped if subset is None else [n.strip() for n in subset.split(",") if n.strip()]
    unknown = [n for n in names if n not in shipped]
    if unknown or not names:
        raise UserError(f"--studies {subset!r}: unknown study {unknown or 'none given'}; use "
                        f"a comma-separated list of {shipped}")
    for name in names:
        load_study(name)  # every study is valid before any runs: one line, exit 2
    deps = {n: set(re.findall(r"run:(\w+)/", (STUDY_DIR / f"{n}.yaml").read_text())) - {n}
            for n in names}
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [n for n in names if n not in ordered and deps[n] <= set(ordered) | (
            deps[n] - set(names))]
        if not ready:
            raise UserError(f"the studies {sorted(set(names) - set(ordered))} load each "
                            "other's runs in a cycle: break it in their weights: run: keys")
        ordered.append(ready[0])
    return ordered


def run_state(run_dir: Path) -> str:
    """new (no run yet), finished (its trials.parquet holds no unfinished trial) or
    interrupted (resume it)."""
    if not run_dir.is_dir():
        return "new"
    trials = run_dir / layout.TRIALS_FILE
    if trials.is_file():
        statuses = set(pd.read_parquet(trials, columns=["status"]).status)
        if not statuses & set(UNFINISHED):
            return "finished"
    return "interrupted"


def reproduce_study(name: str, args: argparse.Namespace, storage: Path) -> dict[str, Any]:
    """Search (or resume, or skip) one study and report it; its index entry."""
    run_name = "quick" if args.quick else "full"
    run_dir = storage / name / run_name
    state = run_state(run_dir)
    started = time.perf_counter()
    code = 0
    searching = state != "finished" and not args.report_only
    if searching:
        argv = [name, "--storage-path", str(storage), "--name", run_name]
        argv += ["--quick"] if args.quick else []
        argv += ["--resume"] if state == "interrupted" else []
        print(f"reproduce: {name}: {'resuming' if state == 'interrupted' else 'running'} "
              f"{' '.join(argv)}", flush=True)
        code = search.main(argv)
    session_s = time.perf_counter() - started if searching else None
    entry = {"study": name, "run_dir": str(run_dir), "state": state, "exit_code": code,
             "search_wall_s": search_wall(run_dir, session_s),
             "session_wall_s": None if session_s is None else round(session_s, 1),
             "description": load_study(name, quick=args.quick).description,
             "report": None, "findings": []}
    if (run_dir / layout.TRIALS_FILE).is_file():
        extra = {} if args.bootstrap is None else {"n_boot": args.bootstrap}
        out = report.build_report(run_dir, args.out / name, **extra)
        s = json.loads((out / "summary.json").read_text())
        entry.update(report=f"{name}/index.html", findings=s.get("findings_detail", []),
                     claims_error=s.get("claims_error"))
    return entry


def search_wall(run_dir: Path, session_s: float | None) -> float | None:
    """The study's search wall time over every reproduce session that searched it (an
    interrupted study's sessions add up), kept in <run>/reproduce.json; None if unknown."""
    path = run_dir / layout.REPRODUCE_FILE
    total = json.loads(path.read_text()).get("search_wall_s") if path.is_file() else None
    if session_s is not None and run_dir.is_dir():
        total = round((total or 0.0) + session_s, 1)
        path.write_text(json.dumps({"search_wall_s": total}))
    return total


def write_index(out: Path, entries: list[dict[str, Any]], quick: bool, total_s: float) -> None:
    """out/summary.json and out/index.html: every study's claims and verdicts. total_wall_s
    sums the studies' search wall times (over all sessions); session_wall_s is this command's."""
    out.mkdir(parents=True, exist_ok=True)
    searched = round(sum(e["search_wall_s"] or 0.0 for e in entries), 1)
    summary = {"profile": "quick" if quick else "full", "total_wall_s": searched,
               "session_wall_s": round(total_s, 1),
               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "studies": entries}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False))
    (out / "index.html").write_text(index_html(summary))
    (out / "index.md").write_text(index_markdown(summary))


def index_html(summary: dict[str, Any]) -> str:
    """A self-contained page: one table row per claim, grouped by study."""
    e = html.escape
    rows = []
    for entry in summary["studies"]:
        link = f'<a href="{e(entry["report"])}">{e(entry["study"])}</a>' if entry["report"] \
            else e(entry["study"])
        wall, code = entry["search_wall_s"], entry["exit_code"]
        notes = [entry["state"]] + ([f"search {wall:g} s"] if wall is not None else []) + \
            ([f"exit {code}"] if code else [])
        head = (f"<td rowspan={max(1, len(entry['findings']))}>{link}<br><small>"
                f"{e(entry['description'])}<br>{e(', '.join(notes))}</small></td>")
        if not entry["findings"]:
            why = entry.get("claims_error") or "no report (the search wrote no results)"
            rows.append(f"<tr>{head}<td colspan=5>{e(why)}</td></tr>")
        for i, f in enumerate(entry["findings"]):
            interval = "—" if f["ci_low"] is None else f"[{f['ci_low']:.3g}, {f['ci_high']:.3g}]"
            effect = "—" if f["effect"] is None else f"{f['effect']:.3g}"
            rows.append(f"<tr>{head if i == 0 else ''}<td>{e(f['name'])}</td>"
                        f"<td class={e(f['verdict'])}>{e(f['verdict'])}</td><td>{effect}</td>"
                        f"<td>{interval}</td><td>{f['n']}</td></tr>")
    return INDEX_PAGE.format(profile=e(summary["profile"]), date=e(summary["date"]),
                             total=summary["total_wall_s"], rows="\n".join(rows))


def index_markdown(summary: dict[str, Any]) -> str:
    """The index as a Markdown table (what the README's verdicts table is copied from)."""
    lines = [f"Reproduce ({summary['profile']} profile), {summary['date']}; searches took "
             f"{summary['total_wall_s']:g} s in all.", "",
             "| study | search s | claim | verdict | effect | 95% CI | n |",
             "|---|---|---|---|---|---|---|"]
    for entry in summary["studies"]:
        wall = "—" if entry["search_wall_s"] is None else f"{entry['search_wall_s']:g}"
        for i, f in enumerate(entry["findings"] or [None]):
            head = f"| {entry['study']} | {wall} |" if i == 0 else "| | |"
            if f is None:
                why = entry.get("claims_error") or "no report (the search wrote no results)"
                lines.append(f"{head} {_cell(why)} | | | | |")
                continue
            interval = "—" if f["ci_low"] is None else f"[{f['ci_low']:.3g}, {f['ci_high']:.3g}]"
            effect = "—" if f["effect"] is None else f"{f['effect']:.3g}"
            lines.append(f"{head} {_cell(f['name'])} | {f['verdict']} | {effect} | {interval} "
                         f"| {f['n']} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


INDEX_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>tune_hw reproduce ({profile})</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}
.supported{{color:#070}} .contradicted{{color:#a00}} .inconclusive{{color:#777}}</style>
</head><body><h1>tune_hw reproduce: every study's claims ({profile} profile)</h1>
<p>{date}; searches took {total} s in all.</p>
<table><tr><th>study</th><th>claim</th><th>verdict</th><th>effect</th><th>95% CI</th>
<th>n</th></tr>
{rows}
</table></body></html>
"""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        if args.bootstrap is not None and args.bootstrap < 1:
            raise UserError(f"--bootstrap must be 1 or more, got {args.bootstrap}")
        storage = Path(args.storage_path).expanduser().resolve()
        entries = []
        for name in study_names(args.studies):
            entries.append(reproduce_study(name, args, storage))
            if entries[-1]["exit_code"] == INTERRUPTED:  # Ctrl-C stops the whole reproduce
                break
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_index(args.out, entries, args.quick, time.perf_counter() - started)
    print(f"index written to {args.out / 'index.html'}")
    if entries and entries[-1]["exit_code"] == INTERRUPTED:
        print("reproduce interrupted: run the same command again to continue", file=sys.stderr)
        return INTERRUPTED
    return 0 if all(e["exit_code"] == 0 for e in entries) else 1


if __name__ == "__main__":
    sys.exit(main())
