"""Fused trials: K configs of one architecture trained as one stacked computation.

Members share everything that shapes the computation (`structure_key`) and differ in `lr`,
`momentum`, `weight_decay` and `seed`. Each member is built by `training.build_net`, as its
trial would be (seeded model, torch.optim optimizer, its own batch-order generator), then
stacked (`stacked.StackedNet`), so its curve is the unfused trial's to float tolerance.

    group = build_group(configs, splits, device)        # or states=[...] to resume
    stats = group.train_epoch(splits.train, batch_size)  # {member id: metrics.EpochStats}
    metrics = group.epoch_metrics(splits)                # {member id: dict | None}
    group.member_state(i)                                # run_trial's checkpoint format
    group.keep([ids])                                    # stopped/diverged members leave

`run_group(configs, report)` is `training.run_trial` for a group: the same metric row
(`metrics.epoch_row`) and state per member and epoch, through `report(member, metrics, state)`,
which returns False to stop that member.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from tune_hw import data, metrics, nets, training
from tune_hw.fused_optim import StackedOptimizer
from tune_hw.stacked import StackedNet

MEMBER_KEYS = ("train.lr", "train.momentum", "train.weight_decay", "train.seed")
FUSABLE_MODELS = ("mlp", "cnn")
EVAL_ROWS = 4096  # rows x members per evaluation chunk (metrics.evaluate's 4096 at K = 1)

MemberReporter = Callable[[int, dict[str, Any], dict[str, Any]], "bool | None"]
EpochEnd = Callable[[int], "Sequence[int] | None"]  # epoch -> members to stop after it

# The largest useful group per architecture and batch size (0: do not fuse), from
# benchmarks/fusion.py: steps per CPU-second per member, K fused over one model at a time, one
# torch thread, 3 interleaved repeats, on the 2 Xeon cores with nothing else running
# (2026-12-02 15:08 UTC, benchmarks/RESULTS.md section 6; an earlier run at load 11 gave the
# same K for every row):
#   mlp (lr_batch's, SGD)  batch 1:    K=4 3.3x  K=16 5.7x  K=64 7.5x
#                          batch 16:       3.4x       5.5x       5.9x
#                          batch 128:      2.2x       2.7x       2.2x
#                          batch 1024:     1.1x       1.1x       0.8x   (fusion loses)
#   mlp + BatchNorm        batch 16:       2.8x       5.4x       6.3x
#                          batch 128:      2.3x       2.7x       2.2x
#                          batch 1024:     1.0x       0.9x       0.7x   (fusion loses)
#   cnn (architectures')   batch 1:        1.8x       3.6x       3.9x
#                          batch 16:       1.6x       2.0x       1.8x
#                          batch 128:      1.1x       0.9x       0.6x   (under 1.2x: no gain)
#                          batch 1024:     0.6x       0.6x       0.6x   (fusion loses)
# A row's K is the largest within 10 % of its best gain, when that gain is >= 1.2x
# (benchmarks.fusion.useful_members); mlp takes the lower of its two rows (a study may use
# BatchNorm), and a batch size between two measured ones takes the larger one's row: the gain
# only falls as the batch grows. Small steps are bound by per-step overhead, which fusion pays
# once for K; large ones by arithmetic and memory traffic, which it cannot share. CUDA is not
# measured yet (no GPU here): it uses the CPU figures, which are conservative for launch-bound
# GPU steps. The benchmark times at most 400 steps from fresh models, before any momentum buffer
# decays into subnormals; a long epoch gets there, and without training.flush_denormals (which
# every trial sets) batch-1 gains at 10k steps were 1.7x at K = 4 and 2.2x at K = 16; with it,
# 3.3x and 6.0x, close to the table (measured over 400 steps).
FUSION_PAYS = {"mlp": {1: 64, 16: 64, 128: 16, 1024: 0}, "cnn": {1: 64, 16: 64, 128: 0, 1024: 0}}


def structure_key(config: dict[str, Any]) -> str:
    """What members of one group must share: the config without the per-member keys."""
    dataset, hp, train = training.split_config(config)
    train = {k: v for k, v in train.items() if f"train.{k}" not in MEMBER_KEYS}
    return repr(sorted({"dataset": dataset, "model": hp, "train": train}.items()))


def fusion_pays(arch: str, batch_size: int, device: str = "cpu") -> int:
    """The largest group worth fusing for model `arch` at `batch_size`; 0: train unfused."""
    del device  # one table until a GPU run measures its own (see FUSION_PAYS)
    rows = FUSION_PAYS.get(arch, {})
    measured = [b for b in sorted(rows) if b >= batch_size]
    return rows[measured[0]] if measured else 0


class FusedGroup:
    """Stacked members with stable ids: network, optimizer, one generator each."""

    def __init__(self, net: StackedNet, optimizer: StackedOptimizer,
                 generators: list[torch.Generator], ids: list[int]):
        self.net, self.optimizer, self.generators, self.ids = net, optimizer, generators, ids

    @classmethod
    def from_members(cls, members: Sequence[tuple], ids: Sequence[int] | None = None
                     ) -> FusedGroup:
        """Stack ordinary (model, torch.optim optimizer, generator) triples, state and all."""
        net = StackedNet.from_modules([model for model, _, _ in members])
        optimizer = StackedOptimizer.from_torch(net, [(m, opt) for m, opt, _ in members])
        return cls(net, optimizer, [g for _, _, g in members],
                   list(ids) if ids is not None else list(range(len(members))))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def device(self) -> torch.device:
        return self.net.flat.device

    def keep(self, ids: Sequence[int]) -> None:
        """Keep only these members (stopped or diverged ones leave: their compute stops)."""
        positions = [self.ids.index(i) for i in ids]
        index = torch.tensor(positions, dtype=torch.long)
        self.net.keep(index)
        self.optimizer.keep(index)
        self.generators = [self.generators[p] for p in positions]
        self.ids = list(ids)

    def member_state(self, member: int) -> dict[str, Any]:
        """Member's state in run_trial's checkpoint format (model, optimizer, generator)."""
        k = self.ids.index(member)
        return {"model": self.net.member_state_dict(k),
                "optimizer": self.optimizer.member_state_dict(k),
                "generator": self.generators[k].get_state()}

    def train_epoch(self, split: data.Split, batch_size: int,
                    grad_sums: torch.Tensor | None = None) -> dict[int, metrics.EpochStats]:
        """One pass per member over its own shuffle of `split`, as training.train_one_epoch.

        `grad_sums` (layers x K) accumulates each tracked weight's gradient norm per step.
        """
        self.net.train()
        n, members = len(split), len(self)
        orders = torch.stack([torch.randperm(n, generator=g) for g in self.generators])
        orders = orders.to(split.x.device)
        losses = torch.empty(math.ceil(n / batch_size), members, device=split.x.device)
        stopped_at = [0] * members  # the step count where a check found a non-finite loss
        with warnings.catch_warnings():  # row views of the (K, P) buffer are strided on purpose
            warnings.filterwarnings("ignore", message="grad and param do not obey")
            losses = self._steps(split, batch_size, orders, losses, stopped_at, grad_sums)
        return self._epoch_stats(losses, stopped_at)

    def _steps(self, split: data.Split, batch_size: int, orders: torch.Tensor,
               losses: torch.Tensor, stopped_at: list[int], grad_sums: torch.Tensor | None
               ) -> torch.Tensor:
        """The epoch's steps; the per-step losses actually run (K columns)."""
        for step in range(len(losses)):
            idx = orders[:, step * batch_size:(step + 1) * batch_size]
            member_losses = self.batch_losses(split.x[idx], split.y[idx])
            self.net.grad.zero_()
            member_losses.sum().backward()  # member k's gradient is that of its own loss only
            if grad_sums is not None:
                grad_sums += self.net.grad_norms()
            self.optimizer.step()
            losses[step] = member_losses.detach()
            if step % training.NAN_CHECK_EVERY == training.NAN_CHECK_EVERY - 1:
                if self._note_non_finite(member_losses, stopped_at, step + 1):
                    return losses[:step + 1]  # every member diverged: nothing left to train
        return losses

    def batch_losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy per member (K) of a batch per member (x: K x B x ...)."""
        logits = self.net(x)
        per_row = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        return per_row.view(y.shape).mean(1)

    @staticmethod
    def _note_non_finite(member_losses: torch.Tensor, stopped_at: list[int], steps: int) -> bool:
        """Record members whose loss is not finite at a check (one sync); True if all are."""
        for k, finite in enumerate(torch.isfinite(member_losses).tolist()):
            if not finite and not stopped_at[k]:
                stopped_at[k] = steps
        return all(stopped_at)

    def _epoch_stats(self, losses: torch.Tensor, stopped_at: list[int]
                     ) -> dict[int, metrics.EpochStats]:
        steps = len(losses)
        finite = torch.isfinite(losses).all(0).tolist()
        means = losses.mean(0).tolist()
        stds = losses.std(0).tolist() if steps > 1 else [0.0] * len(self)
        out = {}
        for k, member in enumerate(self.ids):
            if stopped_at[k]:  # where train_one_epoch would have returned
                out[member] = metrics.EpochStats(math.nan, math.nan, stopped_at[k], False)
            else:
                out[member] = metrics.EpochStats(means[k], stds[k], steps, finite[k])
        return out

    @torch.no_grad()
    def evaluate(self, split: data.Split) -> tuple[list[float], list[float]]:
        """Mean cross-entropy and accuracy per member in eval mode, as metrics.evaluate."""
        self.net.eval()
        members = len(self)
        loss_sum = torch.zeros(members, device=split.x.device)
        correct = torch.zeros(members, dtype=torch.long, device=split.x.device)
        chunk = max(1, EVAL_ROWS // members)
        for start in range(0, len(split), chunk):
            x, target = split.x[start:start + chunk], split.y[start:start + chunk]
            logits = self.net(x.unsqueeze(0).expand(members, *x.shape))
            per_row = F.cross_entropy(logits.flatten(0, 1), target.repeat(members),
                                      reduction="none")
            loss_sum += per_row.view(members, -1).sum(1)
            correct += (logits.argmax(-1) == target).sum(1)
        return ([s / len(split) for s in loss_sum.tolist()],
                [c / len(split) for c in correct.tolist()])

    def epoch_metrics(self, splits: data.Splits) -> dict[int, dict[str, float] | None]:
        """metrics.epoch_metrics per member: None where any value is not finite."""
        measured = metrics.measure(self.evaluate, splits)  # a list per metric, one per member
        return {member: metrics.healthy({name: values[k] for name, values in measured.items()})
                for k, member in enumerate(self.ids)}


def build_group(configs: Sequence[dict[str, Any]], splits: data.Splits, device: str = "cpu",
                states: Sequence[dict[str, Any] | None] | None = None,
                ids: Sequence[int] | None = None) -> FusedGroup:
    """A group from flat trial configs of one structure; `states` resume members (or None)."""
    keys = {structure_key(config) for config in configs}
    if len(keys) != 1:
        raise ValueError("fused members must share everything but "
                         f"{', '.join(MEMBER_KEYS)}: got {len(keys)} different structures")
    states = states if states is not None else [None] * len(configs)
    members = [training.build_net(config, splits, device, state)
               for config, state in zip(configs, states, strict=True)]
    return FusedGroup.from_members(members, ids)


def start_epoch(states: Sequence[dict[str, Any] | None] | None) -> int:
    """The epoch a group resumes at: every member's state must be from the same epoch."""
    if not states or all(state is None for state in states):
        return 1
    epochs = {state["epoch"] if state is not None else 0 for state in states}
    if len(epochs) != 1:
        raise ValueError(f"a resumed group's members must share one epoch, got {sorted(epochs)}")
    return epochs.pop() + 1


def run_group(configs: Sequence[dict[str, Any]], report: MemberReporter,
              states: Sequence[dict[str, Any] | None] | None = None, device: str = "cpu",
              context: dict[str, Any] | None = None, end_epoch: EpochEnd | None = None
              ) -> None:
    """`training.run_trial` for K configs of one structure, trained as one stacked group.

    `report(member, metrics, state)` gets member `i` (its index in `configs`) every epoch, with
    run_trial's metric row and checkpoint state; returning False stops that member. A member
    whose loss or metrics turn non-finite reports `diverged=True` and leaves; the rest go on.
    `end_epoch(epoch)`, called once every member has reported that epoch, may name more
    members to stop (a decision that needs the whole epoch's rows).
    """
    dataset, _, train = training.split_config(configs[0])
    splits = training.load_splits(dataset, device)
    group = build_group(configs, splits, device, states)
    trains = [training.split_config(config)[2] for config in configs]
    fixed = [{**metrics.trial_columns(t["seed"], splits, context),
              "num_params": group.net.layout.size} for t in trains]
    layers = [name for name, _ in nets.linear_weights(group.net.template)]
    for epoch in range(start_epoch(states), train["epochs"] + 1):
        if not len(group):
            return
        grad_sums = (torch.zeros(len(layers), len(group), device=device)
                     if train["track_grads"] else None)
        started = time.perf_counter()
        stats = group.train_epoch(splits.train, train["batch_size"], grad_sums)
        trained = time.perf_counter()
        measured = group.epoch_metrics(splits)
        timing = metrics.timing(len(splits.train), started, trained, time.perf_counter())
        stay = []
        for k, member in enumerate(group.ids):
            result = measured[member] if stats[member].finite else None
            grads = None if grad_sums is None else (
                layers, (grad_sums[:, k] / stats[member].steps).tolist())
            row = metrics.epoch_row(epoch, stats[member], result, trains[member]["lr"], timing,
                                    fixed[member], grads)
            keep_going = report(member, row, {**group.member_state(member), "epoch": epoch})
            if result is not None and keep_going is not False:
                stay.append(member)
        stopped = set(end_epoch(epoch) or ()) if end_epoch is not None else set()
        stay = [member for member in stay if member not in stopped]
        if stay != group.ids:
            group.keep(stay)
