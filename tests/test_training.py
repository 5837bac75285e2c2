"""The training loop (tune_hw.training): one trial of a net, without Ray."""

import io
import math

import pytest
import torch

from tune_hw import metrics, training
from tune_hw.results import ASSIGNED_COLUMNS, EPOCH_COLUMNS


def collect(config, state=None):
    """Run a trial without Ray; states are saved at report time, as Tune's reporter does
    (the state holds live views of the model's tensors)."""
    rows, states = [], []
    training.run_trial(config, lambda m, s: (rows.append(m), states.append(_roundtrip(s))),
                        state)
    return rows, states


def _roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_reports_every_epoch_column_each_epoch_and_learns(tiny_countries):
    rows, states = collect({**tiny_countries, "train.epochs": 8})
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    for row in rows:
        assert set(EPOCH_COLUMNS) - set(ASSIGNED_COLUMNS) <= set(row)
        assert row["steps"] == 16 and row["lr"] == 0.05 and not row["diverged"]
        assert row["step_loss_std"] > 0 and row["samples_per_s"] > 0
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_acc"] > 0.3  # chance is 0.1 on ten countries
    assert states[-1]["epoch"] == 8 and rows[0]["num_params"] == sum(
        p.numel() for p in states[0]["model"].values() if p.dtype.is_floating_point)


@pytest.mark.parametrize("batch_size, steps", [(1, 512), (16, 32), (1024, 1)])
def test_batch_size_sets_the_number_of_optimizer_steps(tiny_countries, batch_size, steps):
    # batch 1024 over 512 rows is one full batch: nothing is padded or dropped
    rows, _ = collect({**tiny_countries, "train.epochs": 1, "train.batch_size": batch_size})
    assert rows[0]["steps"] == steps


def test_resuming_from_a_checkpoint_continues_exactly(tiny_countries):
    full, states = collect(tiny_countries)
    resumed, _ = collect(tiny_countries, states[0])
    assert [r["epoch"] for r in resumed] == [2, 3]
    for a, b in zip(full[1:], resumed, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
        assert a["train_acc"] == b["train_acc"]


def test_nan_loss_ends_the_trial_as_diverged_with_finite_metrics(tiny_countries):
    rows, _ = collect({**tiny_countries, "train.lr": 1e6, "train.epochs": 5})
    last = rows[-1]
    assert last["diverged"] and len(rows) < 5
    assert last["val_acc"] == 0.0 and math.isfinite(last["val_loss"])


def test_gradient_tracking_reports_one_norm_per_linear_layer(tiny_countries):
    rows, _ = collect({**tiny_countries, "model.depth": 4, "train.track_grads": True,
                       "train.epochs": 1})
    assert rows[0]["grad_layers"][0] == "stem.1" and rows[0]["grad_layers"][-1] == "head"
    assert len(rows[0]["grad_norms"]) == 6 and min(rows[0]["grad_norms"]) > 0


def test_gradient_tracking_covers_the_conv1d_layers_of_a_signal_cnn(tiny_countries):
    config = {k: v for k, v in tiny_countries.items() if not k.startswith(("dataset.", "model."))}
    rows, _ = collect({**config, "dataset.name": "mnist1d", "dataset.n_train": 64,
                       "model.name": "cnn", "model.kernel_size": 3, "model.channels": 4,
                       "model.depth": 2, "train.track_grads": True, "train.epochs": 1})
    assert rows[0]["grad_layers"] == ["1", "4", "9"]  # conv, conv, head (0 is the Unflatten)
    assert min(rows[0]["grad_norms"]) > 0


def test_same_seed_same_result_other_seed_other_result(tiny_countries):
    config = {**tiny_countries, "train.epochs": 1}
    a, b = collect(config)[0][0], collect(config)[0][0]
    c = collect({**config, "train.seed": 1})[0][0]
    assert a["val_loss"] == b["val_loss"] != c["val_loss"]


def test_non_finite_evaluation_after_finite_steps_counts_as_diverged(tiny_countries, monkeypatch):
    # weights can blow up in the last steps of an epoch: every step loss finite, eval inf
    monkeypatch.setattr(metrics, "evaluate", lambda model, split: (math.inf, 0.1))
    rows, _ = collect({**tiny_countries, "train.epochs": 3})
    assert len(rows) == 1 and rows[0]["diverged"]
    assert rows[0]["val_acc"] == 0.0 and rows[0]["val_loss"] == metrics.SENTINEL_LOSS


def test_a_searched_whole_model_section_overrides_its_fixed_keys(tiny_countries):
    config = {**tiny_countries, "train.epochs": 1,
              "model": {"name": "mlp", "width": 8, "depth": 1}}
    dataset, hp, train = training.split_config(config)
    assert hp == {"name": "mlp", "width": 8, "depth": 1}
    rows, _ = collect(config)
    assert rows[0]["num_params"] == 2 * 8 + 8 + 8 * 8 + 8 + 8 * 10 + 10


@pytest.mark.parametrize("chunk", [1, 100, 512, 4096])
def test_an_epochs_loss_statistics_match_a_loop_that_keeps_every_step_loss(
        tiny_countries, monkeypatch, chunk):
    # The loop stacks step losses per chunk (no sync per step, no 100,000 live tensors):
    # the epoch's mean and spread equal those of every step's loss kept and read at once,
    # whether the epoch is one chunk, many full chunks or ends in a partial chunk.
    config = {**tiny_countries, "train.batch_size": 1, "train.epochs": 1}
    monkeypatch.setattr(training, "LOSS_CHUNK", chunk)
    splits = training.load_splits(training.split_config(config)[0])
    model, optimizer, generator = training.build_net(config, splits)
    stats = training.train_one_epoch(model, optimizer, splits.train, 1, generator)
    model, optimizer, generator = training.build_net(config, splits)
    order, step_losses = torch.randperm(len(splits.train), generator=generator), []
    for i in order.tolist():
        loss = torch.nn.functional.cross_entropy(model(splits.train.x[i:i + 1]),
                                                 splits.train.y[i:i + 1])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step_losses.append(loss.item())
    kept = torch.tensor(step_losses)
    assert stats.steps == 512 and stats.finite
    assert stats.loss == pytest.approx(float(kept.mean()), rel=1e-6)
    assert stats.loss_std == pytest.approx(float(kept.std()), rel=1e-6)


def test_step_losses_come_back_in_step_order_across_chunks(monkeypatch):
    monkeypatch.setattr(training, "LOSS_CHUNK", 3)
    losses = training.StepLosses()
    for value in range(10):
        losses.add(torch.tensor(float(value), requires_grad=True) * 1)
    assert losses.all().tolist() == [float(v) for v in range(10)]


def _subnormals(obj) -> int:
    """How many nonzero values below float32's smallest normal (1.2e-38) `obj` holds."""
    if isinstance(obj, torch.Tensor):
        size = obj.abs()
        return int(((size > 0) & (size < torch.finfo(torch.float32).tiny)).sum())
    if isinstance(obj, dict):
        return sum(map(_subnormals, obj.values()))
    return sum(map(_subnormals, obj)) if isinstance(obj, (list, tuple)) else 0


def test_flushing_subnormals_keeps_a_trial_within_float_tolerance():
    """Every trial computes with subnormals as zero (training.flush_denormals, for speed):
    at batch 1 with momentum, dead units' momentum buffers decay into subnormals, and the
    flushed trial reports what the plain one does."""
    config = {"dataset.name": "countries", "dataset.n_train": 1500, "dataset.n_val": 500,
              "dataset.n_test": 500, "model.name": "mlp", "model.width": 64,
              "model.depth": 6, "train.epochs": 2, "train.lr": 0.01, "train.momentum": 0.9,
              "train.batch_size": 1, "train.seed": 0}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a 1-CPU trial, and no torch worker thread keeps the flag
    try:
        plain, plain_states = collect(config)
        training.flush_denormals()
        flushed, flushed_states = collect(config)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
    assert _subnormals(plain_states[-1]["optimizer"]) > 1000  # the case it is for
    assert _subnormals(flushed_states[-1]["optimizer"]) == 0
    for ours, theirs in zip(flushed, plain, strict=True):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)
        assert abs(ours["val_acc"] - theirs["val_acc"]) <= 0.01
