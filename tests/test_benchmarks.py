"""The benchmark suite's --quick run: it runs every case and writes its table and JSON.

Never a timing threshold: this machine's speed is not the suite's correctness.
"""

from __future__ import annotations

import json
import math

import pytest

CASES = ("overhead", "data_path", "search_efficiency", "scaling", "snapshot", "fusion",
         "per_step")
HEADINGS = ("## 1. Overhead", "## 2. Data path", "## 3. Search efficiency", "## 4. Scaling",
            "## 5. Snapshots", "## 6. Fusion", "## 7. Per step")


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    from conftest import run_cli

    out = tmp_path_factory.mktemp("bench")
    proc = run_cli("benchmarks.run", "--quick", "--out", str(out), timeout=900)
    return proc, out


def numbers(value):
    """Every number in a nested JSON value."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from numbers(item)


def test_quick_run_writes_table_and_json(quick_bench):
    proc, out = quick_bench
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "RESULTS.md").read_text()
    assert all(heading in table for heading in HEADINGS)
    assert "Machine:" in table and "Load:" in table and "ratio" in table
    report = json.loads((out / "results.json").read_text())
    assert set(report["cases"]) == set(CASES)
    assert report["meta"]["quick"] is True
    assert all(math.isfinite(v) for v in numbers(report["cases"]))


def test_figures_are_sane(quick_bench):
    _, out = quick_bench
    cases = json.loads((out / "results.json").read_text())["cases"]
    for part in (cases["overhead"]["single"], cases["overhead"]["many"]):
        assert part["bare_s"]["median"] > 0 and part["tune_hw_s"]["median"] > 0
        assert part["ratio"] > 0 and part["overhead_s_per_trial"] is not None
        # the same seed, data and steps on both sides: the same model comes out
        assert part["bare_best_val_acc"] == pytest.approx(part["tune_hw_best_val_acc"], abs=1e-3)
    for entry in cases["data_path"]["batch_sizes"].values():
        assert all(v["median"] > 0 for v in entry["steps_per_s"].values())
        assert entry["steps_per_s_ratio_vs_dataloader"] > 0
    assert set(cases["data_path"]["batch_sizes"]) == {"1", "16", "128", "1024"}
    variants = cases["search_efficiency"]["variants"]
    assert set(variants) == {"fifo_random", "asha_optuna", "plain_optuna"}
    for variant in variants.values():
        assert 0 <= variant["best_val_acc"]["median"] <= 1 and variant["wall_s"]["median"] > 0
    assert variants["fifo_random"]["reached"] == 1  # FIFO reaches its own best by definition
    scaling = cases["scaling"]["concurrency"]
    assert set(scaling) == {"1", "2"}
    assert all(c["trials_per_min"]["median"] > 0 for c in scaling.values())
    snap = cases["snapshot"]["variants"]
    assert set(snap) == {"tune_hw", "tune_checkpoints"}
    n = cases["snapshot"]["n_trials"]
    assert all(v["trials"]["median"] == n for v in snap.values())
    # tune_hw gives Tune no checkpoints to delete, so Tune forces no snapshot but its final
    # one; per-epoch checkpoints with num_to_keep=2 force them while trials run
    assert snap["tune_hw"]["forced"]["median"] <= 1
    assert snap["tune_checkpoints"]["forced"]["median"] > snap["tune_hw"]["forced"]["median"]
    fusion = cases["fusion"]
    assert set(fusion["cells"]) == {"mlp/1", "mlp/16", "mlp_bn/16", "cnn/1", "cnn/16"}
    for entry in fusion["cells"].values():
        assert set(entry["steps_per_cpu_s_ratio"]) == {"1", "4"}
        assert all(r > 0 for r in entry["steps_per_cpu_s_ratio"].values())
    assert all(e["grouped_vs_vmap"] > 0 for e in fusion["mechanism"].values())
    per_step = cases["per_step"]
    assert set(per_step["variants"]) == {"minimal", "minimal_two", "run_trial", "tune_one",
                                         "tune_two"}
    for name, entry in per_step["variants"].items():
        assert entry["steps_per_s"]["median"] > 0 and entry["steps_per_s_vs_minimal"] > 0
        # a quick trial trains for under a second: its worker may show no busy window
        if not name.startswith("tune"):
            assert entry["steps_per_cpu_s_vs_minimal"] > 0
    for name in ("tune_one", "tune_two"):  # Ray's daemons, the driver and the trial workers
        cores = per_step["variants"][name]["account"]["cores"]
        assert {"driver", "raylet", "gcs_server", "ray_workers"} <= set(cores)
        assert cores["ray_workers"]["median"] > 0
    inside = per_step["settings"]["trial_worker"]
    assert inside["torch_threads"] == 1 and inside["niceness"] == per_step["settings"]["peer"][
        "niceness"]


def test_useful_members_is_the_largest_k_near_the_best_gain():
    from benchmarks.fusion import useful_members

    assert useful_members({"1": 1.3, "4": 3.0, "16": 6.0, "64": 5.6}) == 64
    assert useful_members({"1": 1.1, "4": 2.0, "16": 2.6, "64": 1.9}) == 16
    assert useful_members({"1": 1.0, "4": 1.1, "16": 0.9, "64": 0.5}) == 0


def test_split_overhead_separates_per_search_and_per_trial():
    from benchmarks.overhead import split_overhead

    # bare: 1 s per trial; tune_hw: 5 s once per search + 1.5 s per trial
    runs = {"bare": [{"wall_s": 4.0, "cpu_s": 4.0}], "bare_1": [{"wall_s": 1.0, "cpu_s": 1.0}],
            "tune_hw": [{"wall_s": 11.0, "cpu_s": 11.0}],
            "tune_hw_1": [{"wall_s": 6.5, "cpu_s": 6.5}]}
    split = split_overhead(runs, 4)
    assert split["per_trial_wall_s"] == pytest.approx(0.5)
    assert split["per_search_wall_s"] == pytest.approx(5.0)


def test_time_to_target_and_summary():
    from benchmarks.common import summary
    from benchmarks.efficiency import time_to

    curve = [(3.0, 0.5), (1.0, 0.2), (7.0, 0.9)]
    assert time_to(curve, 0.5) == 3.0 and time_to(curve, 0.95) is None
    stats = summary([3.0, None, 1.0, 2.0])
    assert (stats["median"], stats["min"], stats["max"], stats["n"]) == (2.0, 1.0, 3.0, 3)
