"""python -m tune_hw.report: files, numbers re-derived from the parquet, the page in Chromium.

Hand-made runs (tests/report_fixtures.py) cover every branch quickly; one real quick
`lr_batch` search and one real quick `deep` search (run side by side, once per module) check
the report end to end against what the search wrote.
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report_fixtures as F  # noqa: E402

from tune_hw import report, results, studies  # noqa: E402
from tune_hw.report import document  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ["overview", "leaderboard", "val-vs-test", "gap", "hyperparameters", "importance",
            "curves", "progress"]


def make_report(run_dir: Path, out: Path, *extra: str) -> dict:
    assert report.main([str(run_dir), "--out", str(out), *extra]) == 0
    return strict_json(out / "summary.json")


def strict_json(path: Path) -> dict:
    """summary.json must be valid JSON: NaN/Infinity are not."""
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def lr_report(tmp_path_factory):
    base = tmp_path_factory.mktemp("lr")
    F.write_lr_batch_run(base / "run")
    return base / "run", make_report(base / "run", base / "report"), base / "report"


@pytest.fixture(scope="module")
def deep_report(tmp_path_factory):
    base = tmp_path_factory.mktemp("deep")
    F.write_deep_run(base / "run")
    return base / "run", make_report(base / "run", base / "report"), base / "report"


# ---------------------------------------------------------------- independent numbers

def expected(run_dir: Path) -> dict:
    """The report's headline numbers, recomputed here from the parquet files alone."""
    t = pd.read_parquet(run_dir / "trials.parquet")
    s = t[t.best_val_acc.notna() & t.test_acc_at_best.notna()].reset_index(drop=True)
    ranked = s.assign(row=np.arange(len(s))).sort_values(
        ["best_val_acc", "val_loss_at_best", "row"], ascending=[False, True, True])
    w = ranked.iloc[0]
    out = {"n_trials": len(t), "n_scored": len(s), "winner": w.trial_id,
           "winner_val": w.best_val_acc, "winner_test": w.test_acc_at_best,
           "regret": s.test_acc_at_best.max() - w.test_acc_at_best,
           "optimism": w.best_val_acc - w.test_acc_at_best,
           "test_rank": int((s.test_acc_at_best > w.test_acc_at_best).sum()) + 1,
           "ranking": ranked.trial_id.tolist(), "status": t.status.value_counts().to_dict(),
           "best_so_far": s.best_val_acc.max(), "spearman": None, "kendall": None}
    if len(s) > 1 and s.best_val_acc.nunique() > 1 and s.test_acc_at_best.nunique() > 1:
        out["spearman"] = stats.spearmanr(s.best_val_acc, s.test_acc_at_best).statistic
        out["kendall"] = stats.kendalltau(s.best_val_acc, s.test_acc_at_best).statistic
    healthy = t[(t.status != "diverged") & t.best_val_acc.notna()]
    reference = healthy.train_acc_at_best.max()
    labels = {}
    for r in t.itertuples():
        if r.status == "diverged":
            labels[r.trial_id] = "diverged"
        elif pd.notna(r.best_val_acc) and pd.notna(r.train_acc_at_best):
            labels[r.trial_id] = ("underfit" if r.train_acc_at_best < reference - 0.10 else
                                  "overfit" if r.train_acc_at_best - r.best_val_acc > 0.05
                                  else "good")
    out["labels"] = labels
    return out


def same_winner_probability(val, test, n_val, n_test, draws=4000, seed=123) -> float:
    """The bootstrap written out again, independently: re-drawn examples, random ties."""
    rng = np.random.default_rng(seed)
    v = rng.binomial(n_val, val, (draws, len(val))) / n_val
    t = rng.binomial(n_test, test, (draws, len(test))) / n_test
    pick = lambda x: np.argmax((x == x.max(1, keepdims=True)) * rng.random(x.shape), 1)  # noqa
    return float(np.mean(pick(v) == pick(t)))


def check_against_parquet(run_dir: Path, s: dict) -> None:
    e, vt = expected(run_dir), s["val_vs_test"]
    assert (s["n_trials"], s["n_scored"]) == (e["n_trials"], e["n_scored"])
    assert {k: v for k, v in s["status_counts"].items() if v} == e["status"]
    assert vt["winner"]["trial_id"] == e["winner"] and vt["winner"]["test_rank"] == e["test_rank"]
    assert vt["winner"]["val_acc"] == pytest.approx(e["winner_val"])
    assert vt["regret"] == pytest.approx(e["regret"]) and vt["regret"] >= 0
    assert vt["optimism"] == pytest.approx(e["optimism"])
    for name in ("spearman", "kendall"):
        if e[name] is None:
            assert vt[name] is None
        else:
            assert vt[name] == pytest.approx(e[name])
    sizes = yaml_sizes(run_dir)
    if sizes and e["n_scored"] > 1:
        t = pd.read_parquet(run_dir / "trials.parquet").dropna(
            subset=["best_val_acc", "test_acc_at_best"])
        p = same_winner_probability(t.best_val_acc.to_numpy(), t.test_acc_at_best.to_numpy(),
                                    sizes["val"], sizes["test"])
        assert vt["p_same_winner"] == pytest.approx(p, abs=0.05)
    assert [row["trial_id"] for row in s["leaderboard"]] == e["ranking"][:len(s["leaderboard"])]
    assert {row["trial_id"]: row["label"] for row in s["gaps"]["trials"]} == e["labels"]
    assert (s["gaps"]["overfit_gap"], s["gaps"]["underfit_margin"]) == (0.05, 0.10)
    assert s["best_so_far"][-1]["best_so_far"] == pytest.approx(e["best_so_far"])


def yaml_sizes(run_dir: Path) -> dict:
    return results.read_study(run_dir).get("data_sizes") or {}


def check_files(out: Path, s: dict, sections: list[str]) -> None:
    """Every figure is a PNG on disk, linked from report.md and embedded in index.html."""
    md, page = (out / "report.md").read_text(), (out / "index.html").read_text()
    assert s["figures"] and len(set(s["figures"])) == len(s["figures"])
    for rel in s["figures"]:
        assert (out / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({rel})" in md
    assert page.count('<img src="data:image/png;base64,') == len(s["figures"])
    assert not re.search(r'(src|href)="(?!data:|#)', page), "index.html must not link files"
    for anchor in sections:
        assert f'<section id="{anchor}">' in page


NUMBER = re.compile(r"(?<![\w.\-/:])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?%?(?![\w/])")


def numbers_in_text(md: str, description: str) -> set[str]:
    lines = [ln for ln in md.splitlines() if ln and not ln.startswith("![")
             and ln.strip() != description]
    return set(NUMBER.findall("\n".join(lines)))


def spellings(s: dict) -> set[str]:
    """Every way the report may print a number held in summary.json."""
    out: set[str] = set()

    def walk(x):
        if isinstance(x, dict):
            [walk(v) for v in x.values()]
        elif isinstance(x, list):
            [walk(v) for v in x]
        elif isinstance(x, str):
            out.update(NUMBER.findall(x))
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            for v in (x, -x):
                out.update({f"{v:.3f}", f"{v:.2f}", f"{v:.3g}", f"{v:.0%}", str(v)})
                if v == int(v):
                    out.add(str(int(v)))
    walk(s)
    return out


# ---------------------------------------------------------------------- hand-made runs

def test_report_of_a_hand_made_run_matches_the_parquet(lr_report):
    run_dir, s, out = lr_report
    check_against_parquet(run_dir, s)
    check_files(out, s, SECTIONS + ["heatmaps", "batch-size"])
    assert s["status_counts"]["diverged"] == 1 and s["status_counts"]["running"] == 1
    assert s["importance"]["values"] and set(s["importance"]["values"]) == {
        "train.lr", "train.batch_size"}
    assert s["val_vs_test"]["verdict"] in (out / "report.md").read_text()


def test_every_number_in_the_text_is_in_summary_json(lr_report, deep_report):
    for _, s, out in (lr_report, deep_report):
        missing = numbers_in_text((out / "report.md").read_text(), s["description"]) - \
            spellings(s)
        assert not missing, f"report.md states numbers summary.json lacks: {missing}"


def test_findings_open_the_report_with_each_claims_verdict(tmp_path):
    """Claims in study.yaml: verdicts in summary.json and first in the text; the effect of the
    gradient claim re-derived from grads.parquet, the per-config means from trials.parquet."""
    F.write_repeated_deep_run(tmp_path / "run")
    s = make_report(tmp_path / "run", tmp_path / "out", "--bootstrap", "400")
    verdicts = {f["name"]: f["verdict"] for f in s["findings"]}
    assert list(verdicts) == [c["name"] for c in F.DEEP_CLAIMS]
    assert verdicts == {"The plain net's first-layer gradient vanishes": "supported",
                        "Residual + BatchNorm beats the plain net": "supported",
                        "The plain net beats residual + BatchNorm": "contradicted",
                        "Depth 8 changes nothing": "supported"}
    assert set(s["findings"][0]) == {"name", "verdict", "effect", "ci_low", "ci_high", "n"}
    grads = pd.read_parquet(tmp_path / "run" / "grads.parquet")
    trials = pd.read_parquet(tmp_path / "run" / "trials.parquet")
    plain = trials[trials["config/model.residual"] == False].trial_id  # noqa: E712
    first = grads[grads.trial_id.isin(plain) & (grads.epoch == 1)]
    ratio = first.groupby("trial_id").apply(
        lambda g: math.log10(g.sort_values("layer").grad_norm.iloc[0]
                             / g.sort_values("layer").grad_norm.iloc[-1]))
    gradient = s["findings"][0]
    assert gradient["effect"] == pytest.approx(ratio.mean()) and gradient["n"] == len(plain)
    assert gradient["ci_low"] <= gradient["effect"] <= gradient["ci_high"] < -2
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.index("## Findings") < md.index("## Overview") < md.index("## Per config")
    for f in s["findings_detail"]:
        assert f"**{f['name']}.** {f['sentence']}" in md
    # per config: 6 configs of 3 repeats, means over the repeats
    configs = {r["config_id"]: r for r in s["configs"]["table"]}
    assert s["configs"]["n_configs"] == 6 and s["configs"]["max_repeats"] == 3
    for cid, group in trials.groupby("config_id"):
        assert configs[cid]["n_repeats"] == 3
        assert configs[cid]["val_mean"] == pytest.approx(group.best_val_acc.mean())
        assert configs[cid]["val_low"] <= configs[cid]["val_mean"] <= configs[cid]["val_high"]


def test_a_claim_study_yaml_does_not_hold_is_inconclusive_and_the_rest_are_tested(tmp_path):
    run = F.write_repeated_deep_run(tmp_path / "run", repeats=1)
    kept = run.study["claims"]
    study = {**run.study, "claims": [{"name": "x", "compare": "nonsense", "group": "all",
                                      "above": 0}, *kept]}
    results.write_study(tmp_path / "run", study)
    s = make_report(tmp_path / "run", tmp_path / "out", "--bootstrap", "50")
    assert s["claims_error"] is None and len(s["findings"]) == 1 + len(kept)
    first = s["findings_detail"][0]
    assert (first["name"], first["verdict"], first["n"]) == ("x", "inconclusive", 0)
    assert "This run cannot test it" in first["sentence"]
    assert "unknown metric 'nonsense'" in first["sentence"]
    assert [f["name"] for f in s["findings"][1:]] == [c["name"] for c in kept]
    assert "This run cannot test it" in (tmp_path / "out" / "report.md").read_text()


def test_claims_that_are_not_a_list_are_a_warning_not_a_crash(tmp_path):
    run = F.write_repeated_deep_run(tmp_path / "run", repeats=1)
    results.write_study(tmp_path / "run", {**run.study, "claims": {"name": "x"}})
    s = make_report(tmp_path / "run", tmp_path / "out", "--bootstrap", "50")
    assert s["findings"] == [] and "claims must be a list" in s["claims_error"]
    assert "claims could not be read" in (tmp_path / "out" / "report.md").read_text()


def test_batch_size_table_matches_the_epochs(lr_report):
    run_dir, s, _ = lr_report
    t = pd.read_parquet(run_dir / "trials.parquet")
    e = pd.read_parquet(run_dir / "epochs.parquet").merge(
        t[["trial_id", "config/train.batch_size"]], on="trial_id")
    by = e.groupby("config/train.batch_size")
    for row in s["batch_size"]:
        g = by.get_group(row["batch_size"])
        assert row["steps_per_epoch"] == g.steps.median()
        assert row["step_loss_std"] == pytest.approx(g.step_loss_std.dropna().median())


def test_deep_run_has_gradient_flow_and_variant_groups(deep_report):
    run_dir, s, out = deep_report
    check_against_parquet(run_dir, s)
    check_files(out, s, SECTIONS + ["grad-flow", "heatmaps"])
    grads = pd.read_parquet(run_dir / "grads.parquet")
    first = grads[grads.epoch == grads.groupby("trial_id").epoch.transform("min")]
    t = pd.read_parquet(run_dir / "trials.parquet").set_index("trial_id")
    group = ("residual=" + t["config/model.residual"].astype(str) + ", norm="
             + t["config/model.norm"] + ", depth=" + t["config/model.depth"].astype(str))
    assert sorted(r["group"] for r in s["grad_flow"]["ratios"]) == sorted(group)
    for row in s["grad_flow"]["ratios"]:
        ids = group[group == row["group"]].index
        g = first[first.trial_id.isin(ids)].groupby("layer").grad_norm.median()
        assert row["input_over_output"] == pytest.approx(g.iloc[0] / g.iloc[-1])
        vanishing = row["input_over_output"] < 1e-3
        assert vanishing == row["group"].startswith("residual=False")
    assert [(h["rows"], h["columns"]) for h in s["heatmaps"]] == [("model", "model.depth")]
    assert s["params"]["model"]["best_value"] == "residual=True, norm=batch"


def test_single_trial_run(tmp_path):
    results.write_run(tmp_path / "run", F.lr_batch_records(1), F.study_dict())
    s = make_report(tmp_path / "run", tmp_path / "out")
    vt = s["val_vs_test"]
    assert s["n_trials"] == 1 and vt["regret"] == 0 and vt["spearman"] is None
    assert vt["p_same_winner"] is None and vt["verdict"].startswith("Only one trial")
    assert s["importance"]["values"] is None and "at least 2 trials" in s["importance"]["note"]
    check_files(tmp_path / "out", s, SECTIONS)


def test_run_with_nothing_scored_yet(tmp_path):
    records = [results.TrialRecord(f"p{i}", {"train.epochs": 3, "train.lr": 0.1}, [],
                                   ended=False) for i in range(2)]
    results.write_run(tmp_path / "run", records, F.study_dict())
    s = make_report(tmp_path / "run", tmp_path / "out")
    assert s["n_scored"] == 0 and s["status_counts"]["pending"] == 2
    assert "No trial has a validation score yet" in (tmp_path / "out/report.md").read_text()


def test_default_out_is_reports_study_run(lr_report, tmp_path):
    run = results.load_run(lr_report[0])
    assert report.default_out(run) == Path("reports/lr_batch/run")
    run.study = {}  # no study.yaml: the study is the parent directory's name
    assert report.default_out(run).parts[-2:] == (lr_report[0].parent.name, "run")


def test_a_directory_that_is_not_a_run_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    proc = subprocess.run([sys.executable, "-m", "tune_hw.report", str(tmp_path)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "not a tune_hw run" in proc.stderr


@pytest.mark.parametrize("name, says", [("missing", "does not exist"),
                                        ("notes.txt", "is a file")])
def test_bad_paths_are_one_line(tmp_path, capsys, name, says):
    (tmp_path / "notes.txt").write_text("hello")
    assert report.main([str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err


# -------------------------------------------------------------------------- the browser

@pytest.mark.parametrize("which", ["lr_report", "deep_report"])
def test_index_html_renders_in_headless_chromium(which, request, tmp_path):
    binary = F.chromium()
    if binary is None:
        pytest.skip("chromium is not installed: run .ci/install-chromium as root (apt-get "
                    "install chromium) to check index.html in a browser")
    _, s, out = request.getfixturevalue(which)
    shot = tmp_path / "index.png"
    page = F.open_page(out / "index.html", shot, binary)
    assert page.errors == []
    assert len(page.images) == len(s["figures"]) and all(i["ok"] for i in page.images)
    assert set(SECTIONS) <= set(page.sections)
    assert s["val_vs_test"]["verdict"][:60] in page.text
    from PIL import Image

    with Image.open(shot) as image:
        width, height = image.size
        low, high = image.convert("L").getextrema()
    assert width >= 800 and height >= 3000 and high - low > 100  # a long page, not blank


def test_a_broken_image_is_caught(tmp_path):
    """The browser check itself can fail: a missing file is reported."""
    binary = F.chromium()
    if binary is None:
        pytest.skip("chromium is not installed: run .ci/install-chromium as root")
    (tmp_path / "page.html").write_text('<html><body><img src="gone.png"></body></html>')
    page = F.open_page(tmp_path / "page.html", tmp_path / "shot.png", binary)
    assert [i["ok"] for i in page.images] == [False] and page.errors


# ------------------------------------------------------------------ real quick searches

@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """Quick `lr_batch` and `deep` searches, side by side (each starts its own local Ray)."""
    storage = tmp_path_factory.mktemp("runs")
    names = [s for s in ("lr_batch", "deep") if (REPO / f"search_spaces/{s}.yaml").is_file()]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = {study: subprocess.Popen(
        [sys.executable, "-m", "tune_hw.search", study, "--quick", "--name", "r1",
         "--storage-path", str(storage)], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for study in names}
    logs = {study: p.communicate(timeout=600)[0] for study, p in procs.items()}
    for study, p in procs.items():
        assert p.returncode == 0, f"quick {study} search failed:\n{logs[study][-3000:]}"
    return storage


def test_real_lr_batch_report(real_runs, tmp_path):
    run_dir = real_runs / "lr_batch" / "r1"
    s = make_report(run_dir, tmp_path / "out")
    check_against_parquet(run_dir, s)
    check_files(tmp_path / "out", s, SECTIONS)
    assert s["data_sizes"] == yaml_sizes(run_dir) and s["val_vs_test"]["p_same_winner"] is not None
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    trials = pd.read_parquet(run_dir / "trials.parquet")
    if trials["config/train.batch_size"].nunique() > 1:
        steps = epochs.merge(trials, on="trial_id").groupby("config/train.batch_size").steps
        assert {r["batch_size"]: r["steps_per_epoch"] for r in s["batch_size"]} == \
            steps.median().to_dict()


def test_real_deep_report(real_runs, tmp_path):
    run_dir = real_runs / "deep" / "r1"
    if not run_dir.is_dir():
        pytest.skip("search_spaces/deep.yaml not present yet")
    s = make_report(run_dir, tmp_path / "out")
    check_against_parquet(run_dir, s)
    check_files(tmp_path / "out", s, SECTIONS + ["grad-flow"])
    grads = pd.read_parquet(run_dir / "grads.parquet")
    assert {r["layers"] for r in s["grad_flow"]["ratios"]} == {grads.layer.nunique()}
    assert len(s["grad_flow"]["ratios"]) == pd.read_parquet(run_dir / "trials.parquet").shape[0]
    # the study's claims, tested on the real run: grad_ratio re-derived from grads.parquet
    claims = studies.load_study("deep", quick=True).claims
    assert [f["name"] for f in s["findings"]] == [c.name for c in claims]
    trials = pd.read_parquet(run_dir / "trials.parquet")
    plain = trials[trials["config/model.residual"] == False].trial_id  # noqa: E712
    first = grads[grads.trial_id.isin(plain) & (grads.epoch == grads.epoch.min())]
    first = first.sort_values("layer").groupby("trial_id").grad_norm
    ratio = np.log10(np.maximum(first.first(), np.finfo(np.float32).tiny) / first.last())
    (detail,) = [f for f in s["findings_detail"] if f["name"] == claims[0].name]
    assert detail["groups"][0]["value"] == pytest.approx(ratio.mean())
    assert detail["groups"][0]["n"] == len(plain)
    assert "## Findings" in (tmp_path / "out" / "report.md").read_text()


def test_a_running_search_is_read_from_rays_files(real_runs, tmp_path):
    """Before the search writes trials.parquet, the report reads Ray's own trial files."""
    run_dir = tmp_path / "lr_batch" / "r1"
    shutil.copytree(real_runs / "lr_batch" / "r1", run_dir)
    written = pd.read_parquet(run_dir / "trials.parquet")
    for name in ("trials.parquet", "epochs.parquet", "grads.parquet"):
        (run_dir / name).unlink(missing_ok=True)
    s = make_report(run_dir, tmp_path / "out", "--bootstrap", "100")
    assert s["n_trials"] == len(written)
    assert s["val_vs_test"]["winner"]["val_acc"] == pytest.approx(written.best_val_acc.max())
    assert not math.isnan(s["val_vs_test"]["regret"])


def test_epochs_study_compares_best_and_last_epoch(tmp_path):
    F.write_variant_run(tmp_path / "run", "epochs", F.EPOCHS_VARIANTS, 6, peaks=[2, 6])
    s = make_report(tmp_path / "run", tmp_path / "out", "--bootstrap", "200")
    check_against_parquet(tmp_path / "run", s)
    check_files(tmp_path / "out", s, SECTIONS + ["best-vs-last"])
    t = pd.read_parquet(tmp_path / "run/trials.parquet")
    drop = t.best_val_acc - t.final_val_acc
    b = s["best_vs_last"]
    assert b["n_best_before_last"] == int((t.best_epoch < t.final_epoch).sum()) == 1
    assert b["median_val_drop"] == pytest.approx(drop.median())
    assert b["max_val_drop"] == pytest.approx(drop.max()) and b["max_val_drop"] > 0
    assert [v["value"] for v in s["params"]["model"]["by_value"]][0] == \
        "cnn kernel_size=5, channels=32, depth=3"


def test_transfer_study_compares_modes(tmp_path):
    F.write_variant_run(tmp_path / "run", "transfer", F.TRANSFER_VARIANTS, 3, peaks=[3, 3, 3])
    s = make_report(tmp_path / "run", tmp_path / "out", "--bootstrap", "200")
    check_files(tmp_path / "out", s, SECTIONS + ["transfer"])
    t = pd.read_parquet(tmp_path / "run/trials.parquet").set_index("config/model.mode")
    table = {row["value"].split("mode=")[1].split(",")[0]: row for row in s["transfer"]["table"]}
    assert set(table) == {"scratch", "linear_probe", "finetune"}
    for mode, row in table.items():
        assert row["best_val_acc"] == pytest.approx(t.best_val_acc[mode])
        assert row["test_acc_of_best"] == pytest.approx(t.test_acc_at_best[mode])


# ----------------------------- ranked by val_loss, one trial diverging in its first epoch

@pytest.fixture(scope="module")
def loss_ranked_run(tmp_path_factory):
    """A quick lr_batch grid ranked by val_loss (min) whose lr 1000 trial diverges at once."""
    from conftest import run_cli
    storage = tmp_path_factory.mktemp("ranked")
    proc = run_cli("tune_hw.search", "lr_batch", "--quick", "--storage-path", str(storage),
                   "--name", "r1", "--set", "search.algorithm=grid", "--num-samples", "1",
                   "--set", "search.metric=val_loss", "--set", "search.mode=min",
                   "--set", "scheduler.name=fifo", "--set", "train.epochs=4",
                   "--set", "space.train.lr={grid: [1000.0, 0.01, 0.1, 0.3]}",
                   "--set", "space.train.batch_size={grid: [64]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return storage / "lr_batch" / "r1", proc


def test_best_epoch_is_the_lowest_validation_loss_when_the_study_says_so(loss_ranked_run):
    run_dir, proc = loss_ranked_run
    trials = pd.read_parquet(run_dir / "trials.parquet").set_index("trial_id")
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    healthy = epochs[~epochs.diverged]
    by_loss = healthy.loc[healthy.groupby("trial_id").val_loss.idxmin()].set_index("trial_id")
    by_acc = healthy.loc[healthy.groupby("trial_id").val_acc.idxmax()].set_index("trial_id")
    assert (trials.loc[by_loss.index, "best_epoch"] == by_loss.epoch).all()
    assert (trials.loc[by_loss.index, "val_loss_at_best"] == by_loss.val_loss).all()
    assert (by_acc.epoch != by_loss.epoch).any()  # the two rankings disagree somewhere here
    in_order = pd.read_parquet(run_dir / "trials.parquet")  # ties go to the earlier row
    best = in_order.trial_id[in_order.val_loss_at_best.idxmin()]
    assert f"best trial {best} (by validation)" in proc.stdout  # the printed best agrees
    assert "(ranked by val_loss, min)" in proc.stdout


def test_a_trial_diverging_in_epoch_1_is_counted_apart_and_left_out(loss_ranked_run, tmp_path):
    run_dir, _ = loss_ranked_run
    trials = pd.read_parquet(run_dir / "trials.parquet")
    diverged = trials[trials["config/train.lr"] == 1000.0].iloc[0]
    assert diverged.status == "diverged" and math.isnan(diverged.best_epoch)
    assert math.isnan(diverged.best_val_acc) and math.isnan(diverged.test_acc_at_best)
    s = make_report(run_dir, tmp_path / "out")
    assert s["status_counts"]["diverged"] == 1 and s["left_out"] == {"diverged": 1}
    vt, kept = s["val_vs_test"], trials[trials.trial_id != diverged.trial_id]
    assert vt["n_trials"] == len(kept) == 3
    if kept.best_val_acc.nunique() > 1 and kept.test_acc_at_best.nunique() > 1:
        assert vt["spearman"] == pytest.approx(
            stats.spearmanr(kept.best_val_acc, kept.test_acc_at_best).statistic)
    assert diverged.trial_id not in {row["trial_id"] for row in s["leaderboard"]}
    ranked = kept.sort_values(["val_loss_at_best", "best_val_acc"], ascending=[True, False])
    assert [row["trial_id"] for row in s["leaderboard"]] == ranked.trial_id.tolist()
    assert "1 without a healthy epoch (1 diverged) are left out" in (
        tmp_path / "out" / "report.md").read_text()


def test_each_table_column_has_one_number_format():
    table = pd.DataFrame({"median_best_epoch": [1.0, 2.0, 3.0], "val_acc": [1.0, 0.5, 0.25],
                          "lr": [1e-5, 0.3, 0.01], "value": [1, 16, 1024],
                          "label": ["a", None, "c"]})
    rows = [line.strip("| ").split(" | ") for line in document.md_table(table).splitlines()[2:]]
    assert rows == [["1", "1.000", "1e-05", "1", "a"],
                    ["2", "0.500", "0.3", "16", "–"],
                    ["3", "0.250", "0.01", "1024", "c"]]
