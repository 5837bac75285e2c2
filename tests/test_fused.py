"""Fused trials: every stacked member trains exactly as its unfused trial (training.run_trial).

Observed on CPU (torch 2.14): members' weights are bit-identical to the unfused models' for
SGD, Adam and AdamW with MLP (none/batch) and CNN; LayerNorm's per-member affine differs in the
last bit. Reported losses and accuracies differ by at most ~3e-7 relative (the order of the
mean over steps), so the tolerances below (the issue's: 1e-4 on the first epoch's train loss,
0.01 on validation accuracy) leave a wide margin for other BLAS builds and devices.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from tune_hw import fused, metrics, models, stacked, training
from tune_hw.fused_optim import StackedOptimizer

COUNTRIES = {"dataset.name": "countries", "dataset.n_train": 512, "dataset.n_val": 256,
             "dataset.n_test": 256, "model.name": "mlp", "model.width": 32, "model.depth": 2,
             "train.epochs": 3, "train.batch_size": 32}
DIGITS = {"dataset.name": "digits", "dataset.n_train": 200, "model.name": "cnn",
          "model.channels": 8, "model.depth": 2, "train.epochs": 3, "train.batch_size": 32}
SGD_MEMBERS = [{"train.lr": 0.05, "train.momentum": 0.9, "train.seed": 0},
               {"train.lr": 0.01, "train.momentum": 0.0, "train.weight_decay": 1e-3,
                "train.seed": 1},
               {"train.lr": 0.2, "train.momentum": 0.5, "train.weight_decay": 1e-2,
                "train.seed": 2}]
ADAM_MEMBERS = [{"train.lr": 1e-3, "train.seed": 0},
                {"train.lr": 1e-2, "train.weight_decay": 1e-2, "train.seed": 1},
                {"train.lr": 3e-3, "train.weight_decay": 1e-1, "train.seed": 2}]
CASES = {  # structure -> members that differ in lr, momentum, weight decay and seed
    "mlp-none-sgd": ({**COUNTRIES}, SGD_MEMBERS),
    "mlp-none-residual-adamw": ({**COUNTRIES, "model.residual": True,
                                 "train.optimizer": "adamw"}, ADAM_MEMBERS),
    "mlp-batch-residual-sgd": ({**COUNTRIES, "model.norm": "batch", "model.residual": True},
                               SGD_MEMBERS),
    "mlp-layer-residual-adam": ({**COUNTRIES, "model.norm": "layer", "model.residual": True,
                                 "train.optimizer": "adam"}, ADAM_MEMBERS),
    "mlp-batch-gelu-adamw": ({**COUNTRIES, "model.norm": "batch", "model.activation": "gelu",
                              "train.optimizer": "adamw"}, ADAM_MEMBERS),
    "mlp-layer-tanh-sgd": ({**COUNTRIES, "model.norm": "layer", "model.activation": "tanh"},
                           SGD_MEMBERS),
    "cnn-none-adam": ({**DIGITS, "train.optimizer": "adam"}, ADAM_MEMBERS),
    "cnn-batch-sgd": ({**DIGITS, "model.norm": "batch", "model.kernel_size": 5}, SGD_MEMBERS),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors, as a 1-CPU trial runs them: a second thread only spins on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def roundtrip(state):
    """A checkpoint through torch.save / torch.load(weights_only=True), as Tune stores it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def unfused(config, state=None, device="cpu"):
    rows, states = [], []
    training.run_trial(config, lambda m, s: (rows.append(m), states.append(roundtrip(s))),
                        state, device)
    return rows, states


def run_fused(configs, states=None, stop=None):
    """run_group's rows and saved states per member; `stop(member, metrics)` ends a member."""
    rows = {i: [] for i in range(len(configs))}
    saved = {i: [] for i in range(len(configs))}

    def report(member, metrics, state):
        rows[member].append(metrics)
        saved[member].append(roundtrip(state))
        return not (stop and stop(member, metrics))
    fused.run_group(configs, report, states)
    return rows, saved


def members_of(case):
    base, members = CASES[case]
    return [{**base, **member} for member in members]


def assert_rows_match(fused_rows, plain_rows):
    assert [r["epoch"] for r in fused_rows] == [r["epoch"] for r in plain_rows]
    first_f, first_p = fused_rows[0], plain_rows[0]
    for key in ("train_loss_running", "train_loss"):  # during and after the first epoch
        assert first_f[key] == pytest.approx(first_p[key], rel=1e-4), key
    for f, p in zip(fused_rows, plain_rows, strict=True):
        assert f["steps"] == p["steps"] and f["diverged"] == p["diverged"]
        assert f["val_acc"] == pytest.approx(p["val_acc"], abs=0.01)
        for key in ("train_loss", "val_loss", "test_loss", "step_loss_std"):
            assert f[key] == pytest.approx(p[key], rel=1e-3), key
        assert set(f) == set(p)  # the same metric row as run_trial


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_member_follows_its_unfused_trial(case):
    configs = members_of(case)
    rows, _ = run_fused(configs)
    for i, config in enumerate(configs):
        assert_rows_match(rows[i], unfused(config)[0])
    assert len({r["val_loss"] for r in (rows[i][-1] for i in rows)}) == len(configs)


def test_members_start_bit_identical_to_their_unfused_models():
    configs = members_of("cnn-batch-sgd")
    splits = training.load_splits(training.split_config(configs[0])[0])
    group = fused.build_group(configs, splits)
    for i, config in enumerate(configs):
        model, _, _ = training.build_net(config, splits, "cpu")
        expected, got = model.state_dict(), group.member_state(i)["model"]
        assert list(got) == list(expected)
        assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_a_diverging_member_leaves_and_never_touches_the_others(monkeypatch):
    # a check every 4 steps: the divergence is caught mid-epoch, as NAN_CHECK_EVERY does
    monkeypatch.setattr(training, "NAN_CHECK_EVERY", 4)
    configs = members_of("mlp-batch-residual-sgd")
    configs[1] = {**configs[1], "train.lr": 1e3}
    rows, _ = run_fused(configs)
    plain = [unfused(config)[0] for config in configs]
    assert rows[1][-1]["diverged"] and len(rows[1]) == len(plain[1]) < 3
    assert rows[1][-1]["steps"] == plain[1][-1]["steps"] < 16  # stopped at a check
    assert rows[1][-1]["val_loss"] == metrics.SENTINEL_LOSS
    for i in (0, 2):
        assert not any(r["diverged"] for r in rows[i])
        assert_rows_match(rows[i], plain[i])


def test_keep_removes_members_from_every_stacked_tensor():
    configs = members_of("mlp-none-sgd")
    splits = training.load_splits(training.split_config(configs[0])[0])
    group = fused.build_group(configs, splits)
    group.train_epoch(splits.train, 32)
    before = group.member_state(2)
    group.keep([2, 0])
    assert group.ids == [2, 0] and len(group.generators) == 2
    assert group.net.flat.shape[0] == 2 and group.net.grad.shape[0] == 2
    assert group.optimizer.state["momentum_buffer"].shape[0] == 2
    assert group.optimizer.neg_lr.flatten().tolist() == pytest.approx([-0.2, -0.05])
    after = group.member_state(2)
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    assert group.train_epoch(splits.train, 32).keys() == {0, 2}


def test_stopped_members_leave_and_the_rest_continue_exactly():
    configs = members_of("mlp-layer-residual-adam")
    rows, _ = run_fused(configs, stop=lambda member, metrics: member == 1)
    assert [len(rows[i]) for i in range(3)] == [3, 1, 3]
    for i in (0, 2):
        assert_rows_match(rows[i], unfused(configs[i])[0])


def assert_same_state(mine, theirs):
    """A member's checkpoint is run_trial's: same keys, tensors, optimizer groups, generator."""
    assert mine.keys() == theirs.keys() and mine["epoch"] == theirs["epoch"]
    assert list(mine["model"]) == list(theirs["model"])
    for name, value in theirs["model"].items():  # num_batches_tracked included
        torch.testing.assert_close(mine["model"][name], value, rtol=1e-5, atol=1e-6)
    assert mine["optimizer"]["param_groups"] == theirs["optimizer"]["param_groups"]
    assert mine["optimizer"]["state"].keys() == theirs["optimizer"]["state"].keys()
    for i, entry in theirs["optimizer"]["state"].items():
        assert mine["optimizer"]["state"][i].keys() == entry.keys()
        for key, value in entry.items():
            torch.testing.assert_close(mine["optimizer"]["state"][i][key], value, rtol=1e-5,
                                       atol=1e-6)
    assert torch.equal(mine["generator"], theirs["generator"])


@pytest.mark.parametrize("case", ["mlp-batch-gelu-adamw", "cnn-batch-sgd"])
def test_member_checkpoints_resume_fused_or_unfused_exactly(case):
    configs = members_of(case)
    rows, saved = run_fused(configs)
    after_one = [saved[i][0] for i in range(len(configs))]
    plain_states = [unfused(config)[1][0] for config in configs]
    for mine, theirs in zip(after_one, plain_states, strict=True):
        assert_same_state(mine, theirs)
    resumed, _ = run_fused(configs, after_one)  # a retried group continues every member
    for i, config in enumerate(configs):
        assert_rows_match(resumed[i], rows[i][1:])
        plain_resumed, _ = unfused(config, after_one[i])  # a member state is a trial state
        assert_rows_match(plain_resumed, rows[i][1:])
    from_plain, _ = run_fused(configs, plain_states)  # and a trial state is a member state
    for i in range(len(configs)):
        assert_rows_match(from_plain[i], rows[i][1:])


def test_member_weights_load_into_an_ordinary_model():
    configs = members_of("cnn-none-adam")
    rows, saved = run_fused(configs)
    splits = training.load_splits(training.split_config(configs[0])[0])
    model = models.build("cnn", splits.in_shape, splits.num_classes, channels=8, depth=2)
    model.load_state_dict(saved[2][-1]["model"])
    loss, acc = metrics.evaluate(model, splits.val)
    assert acc == rows[2][-1]["val_acc"] and loss == pytest.approx(rows[2][-1]["val_loss"])


def test_gradient_norms_per_member_match_run_trial():
    configs = [{**c, "model.depth": 4, "train.track_grads": True, "train.epochs": 2}
               for c in members_of("mlp-batch-residual-sgd")]
    rows, _ = run_fused(configs)
    for i, config in enumerate(configs):
        plain = unfused(config)[0]
        for f, p in zip(rows[i], plain, strict=True):
            assert f["grad_layers"] == p["grad_layers"] and len(f["grad_layers"]) == 6
            assert f["grad_norms"] == pytest.approx(p["grad_norms"], rel=1e-4)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_stacked_optimizer_is_torch_optim_per_member(kind):
    settings = [{"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0},
                {"lr": 0.01, "momentum": 0.0, "weight_decay": 0.1},
                {"lr": 0.03, "momentum": 0.5, "weight_decay": 0.01}]
    plain, stacked_members = [], []
    for seed, hp in enumerate(settings):
        train = {**training.TRAIN_DEFAULTS, **hp, "optimizer": kind}
        for target in (plain, stacked_members):
            torch.manual_seed(seed)
            model = models.build("mlp", (2,), 10, width=8, depth=1, norm="layer")
            target.append((model, training.build_optimizer(model, train)))
    net = stacked.StackedNet.from_modules([m for m, _ in stacked_members])
    optimizer = StackedOptimizer.from_torch(net, stacked_members)
    for step in range(4):
        grads = torch.randn(net.grad.shape, generator=torch.Generator().manual_seed(step))
        net.grad.copy_(grads)
        optimizer.step()
        for k, (model, opt) in enumerate(plain):
            for p, g in zip(model.parameters(), net.layout.views(grads).values(), strict=True):
                p.grad = g[k].clone()
            opt.step()
        assert_same_optimizers(net, optimizer, plain)


def assert_same_optimizers(net, optimizer, plain):
    for k, (model, opt) in enumerate(plain):
        mine = optimizer.member_state_dict(k)
        theirs = opt.state_dict()
        assert mine["param_groups"] == theirs["param_groups"]
        assert mine["state"].keys() == theirs["state"].keys()
        for i, entry in theirs["state"].items():
            assert mine["state"][i].keys() == entry.keys()
            for key, value in entry.items():
                torch.testing.assert_close(mine["state"][i][key], value, rtol=1e-6, atol=1e-7)
        for name, value in model.state_dict().items():
            torch.testing.assert_close(net.member_state_dict(k)[name], value, rtol=1e-6,
                                       atol=1e-7)


def test_conv1d_stacks_the_same_way():
    # the 1-D CNN slot: Conv1d and BatchNorm1d over (B, C, L) signals stack as Conv2d does
    def net():
        return nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(),
                             nn.Conv1d(4, 4, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                             nn.Flatten(), nn.Linear(4, 3))
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        members.append(net())
    group = stacked.StackedNet.from_modules(members)
    x = torch.randn(3, 6, 2, 16)
    logits = group(x)
    logits.sum().backward()
    for k, member in enumerate(members):
        out = member(x[k])
        out.sum().backward()
        torch.testing.assert_close(logits[k], out, rtol=1e-5, atol=1e-6)
        for name, param in member.named_parameters():
            torch.testing.assert_close(group.params[name].grad[k], param.grad, rtol=1e-4,
                                       atol=1e-6)
        for name, value in member.state_dict().items():  # running statistics per member
            torch.testing.assert_close(group.member_state_dict(k)[name], value)


def test_only_one_structure_fuses():
    configs = members_of("mlp-none-sgd")
    assert len({fused.structure_key(c) for c in configs}) == 1
    splits = training.load_splits(training.split_config(configs[0])[0])
    for change in ({"model.width": 16}, {"train.batch_size": 16}, {"train.optimizer": "adam"}):
        assert fused.structure_key({**configs[0], **change}) != fused.structure_key(configs[0])
        with pytest.raises(ValueError, match="share everything but"):
            fused.build_group([configs[0], {**configs[1], **change}], splits)
    with pytest.raises(TypeError, match="cannot stack"):
        stacked.StackedNet.from_modules([nn.Sequential(nn.Dropout(), nn.Linear(2, 2))])


def test_fusion_pays_only_where_it_was_measured_to():
    assert fused.fusion_pays("resnet18", 16, "cpu") == 0
    assert fused.fusion_pays("hist_gradient_boosting", 16, "cpu") == 0
    assert fused.fusion_pays("mlp", 1, "cpu") >= 16 and fused.fusion_pays("mlp", 16, "cpu") >= 16
    for arch in fused.FUSABLE_MODELS:
        useful = [fused.fusion_pays(arch, b, "cpu") for b in (1, 16, 128, 1024, 4096)]
        assert useful == sorted(useful, reverse=True)  # never more fusion at a larger batch
        assert all(k == 0 or k >= 2 for k in useful)
        # between measured batch sizes the larger one's row; beyond them, no fusion
        assert fused.fusion_pays(arch, 32, "cpu") == fused.fusion_pays(arch, 128, "cpu")
        assert fused.fusion_pays(arch, 5000, "cpu") == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_group_trains_on_the_gpu_like_its_unfused_trials():
    configs = members_of("cnn-batch-sgd")
    splits = training.load_splits(training.split_config(configs[0])[0], "cuda")
    group = fused.build_group(configs, splits, "cuda")
    assert group.device.type == "cuda"
    rows = {i: [] for i in range(3)}
    fused.run_group(configs, lambda i, m, s: rows[i].append(m), device="cuda")
    for i, config in enumerate(configs):
        plain, _ = unfused(config, device="cuda")
        assert rows[i][-1]["val_acc"] == pytest.approx(plain[-1]["val_acc"], abs=0.01)
        assert math.isfinite(rows[i][-1]["val_loss"])


def test_evaluation_in_chunks_matches_metrics_evaluate(monkeypatch):
    configs = members_of("mlp-none-sgd")
    splits = training.load_splits(training.split_config(configs[0])[0])
    group = fused.build_group(configs, splits)
    expected = [metrics.evaluate(training.build_net(c, splits, "cpu")[0], splits.val)
                for c in configs]
    for rows_per_chunk in (100, 4096):  # 33 rows per member and chunk, then one chunk
        monkeypatch.setattr(fused, "EVAL_ROWS", rows_per_chunk)
        losses, accs = group.evaluate(splits.val)
        assert accs == [acc for _, acc in expected]
        assert losses == pytest.approx([loss for loss, _ in expected], rel=1e-6)
