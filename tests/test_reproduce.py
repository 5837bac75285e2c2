"""python -m tune_hw.reproduce without a search: study order, run states, bad input, the index
page. The end-to-end `reproduce --quick` is the last test of test_search_spaces.py (it reuses
that module's quick runs)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tune_hw import layout, reproduce


def test_every_shipped_study_runs_and_a_run_it_loads_comes_first():
    names = reproduce.study_names(None)
    assert sorted(names) == sorted(p.stem for p in layout.STUDY_DIR.glob("*.yaml"))
    assert names.index("pretrain") < names.index("transfer")
    assert reproduce.study_names("transfer, pretrain") == ["pretrain", "transfer"]
    assert reproduce.study_names("transfer") == ["transfer"]  # it makes its pretrain run


@pytest.mark.parametrize("argv, says", [
    (["--studies", "lr_batch,nope"], "--studies 'lr_batch,nope': unknown study ['nope']"),
    (["--studies", ","], "unknown study none given"),
    (["--bootstrap", "0"], "--bootstrap must be 1 or more, got 0"),
])
def test_bad_input_is_one_line_exit_2_and_runs_nothing(tmp_path, capsys, argv, says):
    code = reproduce.main(["--quick", "--storage-path", str(tmp_path / "runs"), "--out",
                           str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1
    assert says in err and not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_run_state_new_finished_or_interrupted(tmp_path):
    run = tmp_path / "deep" / "quick"
    assert reproduce.run_state(run) == "new"
    run.mkdir(parents=True)
    assert reproduce.run_state(run) == "interrupted"  # Ray's files, no results yet
    pd.DataFrame({"status": ["completed", "running"]}).to_parquet(run / "trials.parquet")
    assert reproduce.run_state(run) == "interrupted"
    pd.DataFrame({"status": ["completed", "diverged"]}).to_parquet(run / "trials.parquet")
    assert reproduce.run_state(run) == "finished"


def test_the_search_wall_adds_up_over_sessions_and_stays_with_the_run(tmp_path):
    run = tmp_path / "deep" / "full"
    assert reproduce.search_wall(run, 5.0) is None  # no run directory: nothing to keep
    run.mkdir(parents=True)
    assert reproduce.search_wall(run, None) is None  # never measured
    assert reproduce.search_wall(run, 5.0) == 5.0
    assert reproduce.search_wall(run, 2.25) == 7.2  # an interrupted search, resumed
    assert reproduce.search_wall(run, None) == 7.2  # a finished run, reported again


def test_the_index_lists_each_claim_escaped_with_its_verdict(tmp_path):
    finding = {"name": "a <b> claim", "verdict": "contradicted", "effect": -0.25,
               "ci_low": -0.3, "ci_high": -0.2, "n": 6}
    entries = [{"study": "deep", "description": "x & y", "state": "new", "exit_code": 0,
                "search_wall_s": 12.5, "report": "deep/index.html", "findings": [finding]},
               {"study": "epochs", "description": "e", "state": "new", "exit_code": 1,
                "search_wall_s": 3.0, "report": None, "findings": []}]
    reproduce.write_index(tmp_path, entries, True, 99.0)  # this command's time
    page = (tmp_path / "index.html").read_text()
    assert "a &lt;b&gt; claim" in page and "x &amp; y" in page and "<b>" not in page
    assert '<td class=contradicted>contradicted</td><td>-0.25</td><td>[-0.3, -0.2]</td>' \
        '<td>6</td>' in page
    assert 'href="deep/index.html"' in page and "exit 1" in page
    table = (tmp_path / "index.md").read_text().splitlines()
    assert "| deep | 12.5 | a <b> claim | contradicted | -0.25 | [-0.3, -0.2] | 6 |" in table
    assert "| epochs | 3 | no report (the search wrote no results) | | | | |" in table
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["profile"] == "quick" and summary["total_wall_s"] == 15.5  # 12.5 + 3.0
    assert summary["session_wall_s"] == 99.0
    assert summary["studies"][0]["findings"] == [finding]


def test_an_interrupted_search_stops_the_reproduce_with_130(tmp_path, monkeypatch, capsys):
    searched = []

    def interrupted(argv):  # a search the user stopped with Ctrl-C (search.main's exit code)
        searched.append(argv[0])
        return 130

    monkeypatch.setattr(reproduce.search, "main", interrupted)
    code = reproduce.main(["--quick", "--studies", "deep,epochs", "--storage-path",
                           str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert code == 130 and searched == ["deep"]  # epochs is not started
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [e["study"] for e in summary["studies"]] == ["deep"]
    assert "run the same command again to continue" in capsys.readouterr().err


def test_report_only_searches_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce.search, "main", lambda argv: pytest.fail(f"searched {argv}"))
    code = reproduce.main(["--quick", "--studies", "deep", "--report-only", "--storage-path",
                           str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    entry = json.loads((tmp_path / "out" / "summary.json").read_text())["studies"][0]
    assert code == 0 and entry["state"] == "new" and entry["session_wall_s"] is None
