"""Turn a tune_hw run into a report that says whether validation picked the right config.

    python -m tune_hw.report runs/lr_batch/r1                  # -> reports/lr_batch/r1/
    python -m tune_hw.report runs/deep/r1 --out /tmp/deep_report
    python -m tune_hw.report runs/lr_batch/r1 --top 8 --bootstrap 10000 --seed 1

It writes report.md, index.html (self-contained: figures are embedded, so it opens from disk
or as an e-mail attachment), figures/*.png and summary.json (every number the text states;
NaN is written as null). It reads whatever the run holds: a finished run, an interrupted one,
one still running (from Ray's own trial files until the search writes trials.parquet), or a
single trial. The analysis itself lives in tune_hw/analysis/, as pure functions; this package
wires it: `summary` (the numbers), `figures`, `sections` (the text) and `document` (Markdown
and HTML).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from tune_hw import layout
from tune_hw.analysis.trials import N_BOOTSTRAP
from tune_hw.errors import ArgumentParser, UserError
from tune_hw.ray_files import read_run
from tune_hw.report.document import Doc
from tune_hw.report.sections import write_sections
from tune_hw.report.summary import jsonable, summarize
from tune_hw.results import Run
from tune_hw.storage import location

DEFAULT_OUT = Path("reports")
MAX_BOOTSTRAP = 100_000  # 1e5 resamples of every trial's two accuracies: seconds, not GiBs


def _integer(low: int, high: int | None = None):
    """An argparse type: a whole number in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high:,}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value:,}")
        return value
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m tune_hw.report",
                                     description="Write the report of a tune_hw run.")
    parser.add_argument("run_dir", help="a run directory, e.g. runs/lr_batch/r1, or its URI "
                        "(s3://bucket/runs/lr_batch/r1)")
    parser.add_argument("--out", type=Path,
                        help="output directory (default reports/<study>/<run_name>/)")
    parser.add_argument("--top", type=_integer(1), default=5,
                        help="trials in the top learning curves (default 5)")
    parser.add_argument("--bootstrap", type=_integer(1, MAX_BOOTSTRAP), default=N_BOOTSTRAP,
                        help=f"bootstrap resamples (default {N_BOOTSTRAP}, at most "
                             f"{MAX_BOOTSTRAP:,})")
    parser.add_argument("--seed", type=_integer(0), default=0,
                        help="seed of bootstrap and importance (0 or more)")
    return parser.parse_args(argv)


def default_out(run: Run) -> Path:
    """reports/<study>/<run_name>: the study's name only when it is a plain name (study.yaml
    is the run's, not ours to trust), else the directory the run sits in."""
    study = run.study.get("name")
    try:
        layout.check_name(study, "study name")
    except (UserError, TypeError):
        study = run.path.resolve().parent.name
    return DEFAULT_OUT / str(study) / run.path.resolve().name


def make_out_dir(out: Path) -> None:
    """The report's directory and its figures/, or one line saying why it cannot be."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a directory for the report")
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the report directory {out} ({exc.strerror or exc}); "
                        "give a directory you can write with --out") from None


def earlier_figures(out: Path) -> list[Path]:
    """The figures an earlier report listed in out/summary.json: the only files it replaces
    (a directory given with --out may hold other PNGs)."""
    try:
        listed = json.loads((out / "summary.json").read_text()).get("figures", [])
    except (OSError, ValueError, AttributeError):
        return []
    names = [f for f in listed if isinstance(f, str) and re.fullmatch(r"figures/\w+\.png", f)]
    return [out / name for name in names if (out / name).is_file()]


def build_report(run_dir: str | Path, out: Path | None = None, top: int = 5,
                 n_boot: int = N_BOOTSTRAP, seed: int = 0) -> Path:
    """Analyse the run and write report.md, index.html, figures/ and summary.json."""
    run = read_run(location(run_dir))
    out = Path(out) if out else default_out(run)
    make_out_dir(out)
    for old in earlier_figures(out):
        old.unlink()
    s = summarize(run, top, n_boot, seed)
    doc = Doc(f"{s['study']} / {s['run_name']}: tune_hw report")
    write_sections(doc, s, run, out)
    s["figures"] = [value[0] for kind, value in doc.blocks if kind == "figure"]
    (out / "summary.json").write_text(json.dumps(jsonable(s), indent=1, allow_nan=False))
    (out / "report.md").write_text(doc.markdown())
    (out / "index.html").write_text(doc.html(out))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = build_report(args.run_dir, args.out, args.top, args.bootstrap, args.seed)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report written to {out}/ (open {out / 'index.html'})")
    return 0
