"""Every study of search_spaces/ runs its quick profile end to end on one shared Ray instance,
and its parquet files carry what the study's question needs."""

from __future__ import annotations

import html
import json
import math
import os

import pandas as pd
import pytest
import torch

from tune_hw import layout, models, pretrained, reproduce, results, search, studies

STUDIES = ["architectures", "architectures_1d", "lr_extremes", "epochs", "normalization", "width_depth", "deep",
           "batch_size", "pretrain", "transfer"]


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    """One Ray for all quick runs; relative run: references resolve under this storage."""
    import ray

    root = tmp_path_factory.mktemp("runs")
    previous = os.environ.get("TUNE_HW_STORAGE")
    os.environ["TUNE_HW_STORAGE"] = str(root)
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield root
    ray.shutdown()
    if previous is None:
        os.environ.pop("TUNE_HW_STORAGE", None)
    else:
        os.environ["TUNE_HW_STORAGE"] = previous


def quick(storage, study: str) -> results.Run:
    """Run `study --quick` in-process, as the CLI does, and read the run back."""
    code = search.main([study, "--quick", "--storage-path", str(storage), "--name", "quick"])
    assert code == 0
    return results.load_run(storage / study / "quick")


def by(trials: pd.DataFrame, **config) -> pd.Series:
    """The one trial whose config matches every given key (dots written as __)."""
    mask = pd.Series(True, index=trials.index)
    for key, value in config.items():
        mask &= trials[f"config/{key.replace('__', '.')}"] == value
    assert mask.sum() == 1, config
    return trials[mask].iloc[0]


def test_every_study_file_says_which_question_it_answers():
    for name in STUDIES:
        text = studies.study_path(name).read_text()
        assert text.startswith("# Question"), name
        study = studies.load_study(name, quick=True)
        assert study.description


def test_architectures_compares_mlps_and_every_cnn_kernel(storage):
    everything = quick(storage, "architectures").trials  # its quick profile keeps 2 repeats
    assert set(everything.status) == {"completed"} and len(everything) == 14
    assert all(sorted(g.seed) == [0, 1] for _, g in everything.groupby("config_id"))
    assert everything.config_id.nunique() == 7
    trials = everything[everything.repeat == 0]
    cnn = trials[trials["config/model.name"] == "cnn"]
    assert sorted(cnn["config/model.kernel_size"]) == [1, 3, 5, 7]
    assert (trials["config/model.name"] == "mlp").sum() == 3
    assert trials[["train_acc_at_best", "best_val_acc"]].notna().all().all()
    # kernel size 1 sees no spatial structure: the fewest parameters of all
    assert by(trials, model__name="cnn", model__kernel_size=1).num_params == \
        trials.num_params.min()


def test_architectures_1d_crosses_every_model_with_ordered_and_shuffled_mnist1d(storage):
    run = quick(storage, "architectures_1d")
    trials = run.trials
    assert set(trials.status) == {"completed"} and len(trials) == 10
    kernels = trials["config/model.kernel_size"].fillna(0).astype(int)  # 0: the MLP
    assert set(zip(kernels, trials["config/dataset.shuffle"], strict=True)) == \
        {(k, shuffle) for k in (0, 1, 3, 5, 7) for shuffle in (False, True)}
    assert run.study["data_sizes"] == {"train": 500, "val": 800, "test": 1000}
    # Conv1d on the signals: each layer has k x c_in x c_out weights (a Conv2d would have k^2)
    cnn = trials[trials["config/model.name"] == "cnn"]
    params = dict(zip(cnn["config/model.kernel_size"], cnn.num_params, strict=True))
    assert params == {k: (32 * k + 32) + 2 * (32 * 32 * k + 32) + (32 * 10 + 10)
                      for k in (1, 3, 5, 7)}
    mlp = trials[trials["config/model.name"] == "mlp"]
    assert (mlp.num_params == (40 * 256 + 256) + 2 * (256 * 256 + 256) + (256 * 10 + 10)).all()


def test_lr_extremes_records_divergence_without_retry(storage):
    run = quick(storage, "lr_extremes")
    trials = run.trials
    assert len(trials) == 12 and set(trials.status) <= {"completed", "diverged"}
    high = trials[trials["config/train.lr"] == 1.0]
    assert len(high) == 3
    for _, trial in high.iterrows():  # lr 1.0 either blows up or stalls near chance (0.1)
        assert trial.status == "diverged" or trial.final_val_acc < 0.2
    gelu = by(trials, model__activation="gelu", train__lr=1.0)
    assert gelu.status == "diverged" and pd.isna(gelu.error)
    rows = run.epochs[run.epochs.trial_id == gelu.trial_id]
    assert rows.epoch.tolist() == [1] and rows.diverged.tolist() == [True]  # not retried
    # the epoch measured nothing (the searcher was shown sentinels; the parquet holds none)
    assert math.isnan(rows.val_acc.iloc[0]) and math.isnan(rows.step_loss_std.iloc[0])
    assert math.isnan(gelu.best_val_acc) and math.isnan(gelu.best_epoch)


def test_epochs_keeps_best_and_final_metrics(storage):
    run = quick(storage, "epochs")
    trials, epochs = run.trials, run.epochs
    assert len(trials) == 3 and (trials.final_epoch == 4).all()
    for _, trial in trials.iterrows():
        rows = epochs[epochs.trial_id == trial.trial_id].set_index("epoch")
        assert trial.best_val_acc == rows.val_acc.max()
        at_best = rows.loc[trial.best_epoch]
        assert trial.val_loss_at_best == at_best.val_loss
        assert trial.test_acc_at_best == at_best.test_acc
        assert trial.final_val_acc == rows.val_acc.loc[4]


def test_normalization_crosses_norms_and_learning_rates(storage):
    run = quick(storage, "normalization")
    trials = run.trials
    pairs = set(zip(trials["config/model.norm"], trials["config/train.lr"], strict=True))
    assert pairs == {(n, lr) for n in ("none", "batch", "layer")
                     for lr in (1e-3, 1e-2, 1e-1, 1.0)}
    assert len(run.epochs) == 12 * 2  # every learning curve is whole (FIFO)
    # BatchNorm and LayerNorm add their affine parameters to the same MLP
    assert by(trials, model__norm="batch", train__lr=0.01).num_params == \
        by(trials, model__norm="none", train__lr=0.01).num_params + 2 * 64 * 6


def test_width_depth_is_a_full_grid(storage):
    trials = quick(storage, "width_depth").trials
    grid = set(zip(trials["config/model.width"], trials["config/model.depth"], strict=True))
    assert grid == {(w, d) for w in (16, 32, 64, 128) for d in (1, 2, 6, 10)}
    for depth in (1, 2, 6, 10):
        sizes = trials[trials["config/model.depth"] == depth].sort_values("config/model.width")
        assert sizes.num_params.is_monotonic_increasing


def test_deep_tracks_every_layer_and_the_plain_net_vanishes(storage):
    run = quick(storage, "deep")
    trials, grads = run.trials, run.grads
    assert len(trials) == 3 and set(trials.status) == {"completed"}
    assert (grads.groupby(["trial_id", "epoch"]).layer.count() == 102).all()
    first_last = {}
    for _, trial in trials.iterrows():
        norms = grads[grads.trial_id == trial.trial_id].sort_values("layer").grad_norm
        first_last[(trial["config/model.residual"], trial["config/model.norm"])] = \
            (norms.iloc[0], norms.iloc[-1])
    plain_first, plain_last = first_last[(False, "none")]
    assert plain_last > 0 and plain_first < 1e-6 * plain_last  # vanished on the way down
    bn_first, bn_last = first_last[(True, "batch")]
    assert bn_first > 1e-2 * bn_last
    assert names_run_input_to_output(grads)


def names_run_input_to_output(grads: pd.DataFrame) -> bool:
    one = grads[grads.trial_id == grads.trial_id.iloc[0]].sort_values("layer")
    names = one.name.tolist()
    return names[0] == "stem.1" and names[1] == "blocks.0.linear" and names[-1] == "head"


def test_batch_size_records_steps_and_step_loss_noise(storage):
    run = quick(storage, "batch_size")
    trials, epochs = run.trials, run.epochs
    assert sorted(trials["config/train.batch_size"]) == [1, 16, 128, 1024]
    assert trials["config/train.lr"].nunique() == 4  # lr is drawn anew for each batch size
    for _, trial in trials.iterrows():
        row = epochs[epochs.trial_id == trial.trial_id].iloc[0]
        size = trial["config/train.batch_size"]
        assert row.steps == math.ceil(1024 / size)
        if size < 1024 and trial.status != "diverged":
            assert row.step_loss_std > 0
    assert epochs[epochs.steps == 1].step_loss_std.iloc[0] == 0.0  # one step, no spread


def test_transfer_chain_loads_the_pretrain_checkpoint(storage):
    pretrain = quick(storage, "pretrain")
    assert len(pretrain.trials) == 1 and pretrain.trials.status.iloc[0] == "completed"
    trials = quick(storage, "transfer").trials
    assert set(trials.status) == {"completed"}
    modes = trials.set_index(trials["config/model.mode"].fillna(trials["config/model.name"]))
    assert set(modes.index) == {"scratch", "linear_probe", "finetune", "hist_gradient_boosting"}
    assert modes.loc["finetune", "config/model.weights"] == "run:pretrain/quick"
    assert modes.loc["hist_gradient_boosting", "num_params"] > 0  # tree nodes
    assert modes.loc["hist_gradient_boosting", "best_val_acc"] > 0.4  # chance is 0.2
    # the source weights really reach the target model (conv layers; the head is new)
    state = torch.load(pretrained.best_run_checkpoint("pretrain/quick"), weights_only=True)
    net = models.build("resnet18", (1, 8, 8), 5, mode="finetune", weights="run:pretrain/quick")
    assert torch.equal(net.layer1[0].conv1.weight, state["model"]["layer1.0.conv1.weight"])


def test_reproduce_quick_indexes_every_study_with_its_verdicts(storage, tmp_path):
    """Last in this module: the quick runs above are reused (a finished run is reported, not
    rerun), lr_batch's is run here; every study gets a report and its claims a verdict."""
    code = reproduce.main(["--quick", "--storage-path", str(storage), "--out",
                           str(tmp_path / "index"), "--bootstrap", "200"])
    assert code == 0
    index = json.loads((tmp_path / "index" / "summary.json").read_text())
    shipped = sorted(p.stem for p in layout.STUDY_DIR.glob("*.yaml"))
    entries = {e["study"]: e for e in index["studies"]}
    assert sorted(entries) == shipped and index["profile"] == "quick"
    assert [e["study"] for e in index["studies"]].index("pretrain") < \
        [e["study"] for e in index["studies"]].index("transfer")
    reused = {name for name in STUDIES if name in entries}
    assert {entries[n]["state"] for n in reused} == {"finished"}
    assert entries["lr_batch"]["state"] == "new" and entries["lr_batch"]["search_wall_s"] > 0
    page = (tmp_path / "index" / "index.html").read_text()
    for name in shipped:
        study = studies.load_study(name, quick=True)
        entry = entries[name]
        assert [f["name"] for f in entry["findings"]] == [c.name for c in study.claims]
        assert all(f["verdict"] in ("supported", "contradicted", "inconclusive")
                   for f in entry["findings"])
        summary = json.loads((tmp_path / "index" / name / "summary.json").read_text())
        assert summary["findings"] == [{k: f[k] for k in ("name", "verdict", "effect",
                                                            "ci_low", "ci_high", "n")}
                                       for f in entry["findings"]]
        assert f'href="{name}/index.html"' in page
        assert all(html.escape(c.name) in page for c in study.claims)
    # a second reproduce reruns nothing: every run is finished
    again = reproduce.main(["--quick", "--storage-path", str(storage), "--out",
                            str(tmp_path / "again"), "--studies", "lr_batch",
                            "--bootstrap", "50"])
    entries_again = json.loads((tmp_path / "again" / "summary.json").read_text())["studies"]
    assert again == 0 and [e["state"] for e in entries_again] == ["finished"]
    # the wall time of the session that searched it, kept with the run
    assert entries_again[0]["search_wall_s"] == entries["lr_batch"]["search_wall_s"]
    assert entries_again[0]["session_wall_s"] is None
