"""torch.optim's SGD, Adam and AdamW for K stacked members, each with its own hyperparameters.

The update is torch.optim's single-tensor algorithm (dampening 0, no nesterov, no amsgrad;
Adam's betas and eps as given) written once over a `StackedNet`'s flat buffer, with per-member
`lr`, `momentum` and `weight_decay` expanded over that member's parameters: a step is a fixed
handful of element-wise kernels whatever the depth. States convert both ways to and from each
member's own torch.optim `state_dict`, so a member resumes, or leaves, as an ordinary trial.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tune_hw.stacked import StackedNet

KINDS = {torch.optim.AdamW: "adamw", torch.optim.Adam: "adam", torch.optim.SGD: "sgd"}
STATE_KEYS = {"sgd": ("momentum_buffer",), "adam": ("exp_avg", "exp_avg_sq"),
              "adamw": ("exp_avg", "exp_avg_sq")}
HYPER = ("lr", "momentum", "weight_decay")


def optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    """sgd | adam | adamw, refusing options the stacked update does not implement."""
    kind = KINDS.get(type(optimizer))
    group = optimizer.param_groups[0] if len(optimizer.param_groups) == 1 else None
    unsupported = kind is None or group is None or group.get("maximize") or \
        group.get("nesterov") or group.get("dampening", 0) or group.get("amsgrad")
    if unsupported:
        raise ValueError(f"cannot fuse {type(optimizer).__name__} with "
                         f"{len(optimizer.param_groups)} group(s) and these options: fused "
                         "training runs SGD (dampening 0, no nesterov), Adam and AdamW")
    return kind


class StackedOptimizer:
    """One optimizer for a StackedNet; member k follows torch.optim with its own settings."""

    def __init__(self, net: StackedNet, kind: str, hyper: dict[str, torch.Tensor],
                 state: dict[str, torch.Tensor], steps: int, groups: list[list[dict[str, Any]]],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.net, self.kind, self.state, self.steps = net, kind, state, steps
        self.groups, self.betas, self.eps = groups, betas, eps
        self.layout = net.layout
        self.work: tuple[torch.Tensor, torch.Tensor] | None = None
        self._set_hyper(hyper)

    @classmethod
    def from_torch(cls, net: StackedNet, members: Sequence[tuple[nn.Module, torch.optim.Optimizer]]
                   ) -> StackedOptimizer:
        """Stack each member's torch.optim optimizer: settings, state and step count."""
        kind = _one({optimizer_kind(opt) for _, opt in members}, "optimizer type")
        groups = [opt.param_groups[0] for _, opt in members]
        betas = _one({tuple(g.get("betas", (0.9, 0.999))) for g in groups}, "Adam betas")
        eps = _one({g.get("eps", 1e-8) for g in groups}, "Adam eps")
        hyper = {key: torch.tensor([float(g.get(key, 0.0)) for g in groups], dtype=torch.float64)
                 for key in HYPER}
        per_member = [_member_tensors(model, opt, STATE_KEYS[kind]) for model, opt in members]
        # SGD keeps no step count: its "steps" only says whether momentum buffers exist yet,
        # which members without momentum never have
        steps = {s for (s, _), g in zip(per_member, groups, strict=True)
                 if kind != "sgd" or g["momentum"] != 0}
        state = {key: net.layout.stack([tensors[key] for _, tensors in per_member])
                 for key in STATE_KEYS[kind]}
        saved = [opt.state_dict()["param_groups"] for _, opt in members]
        return cls(net, kind, hyper, state, _one(steps or {0}, "optimizer step count"), saved,
                   betas, eps)

    def _set_hyper(self, hyper: dict[str, torch.Tensor]) -> None:
        """Per-member values (K, float64) and the (K, 1) columns the update broadcasts.

        Each column is rounded to float32 exactly as torch.optim rounds its scalar, so a
        member's update is torch's, bit for bit where the kernels agree.
        """
        self.hyper = hyper
        dtype = self.net.flat.dtype
        self.uses = {k: bool((v != 0).any()) for k, v in hyper.items()}
        column = {k: v.to(self.net.flat.device)[:, None] for k, v in hyper.items()}
        self.lr = column["lr"]  # float64: Adam's step size is computed from it every step
        self.neg_lr = (-column["lr"]).to(dtype)  # SGD's alpha=-lr
        self.momentum = column["momentum"].to(dtype)
        self.weight_decay = column["weight_decay"].to(dtype)
        self.decay = (1 - column["lr"] * column["weight_decay"]).to(dtype)  # AdamW's factor

    @torch.no_grad()
    def step(self) -> None:
        """One update of every member from the gradients in `net.grad`."""
        self.steps += 1
        param, grad = self.net.flat, self.net.grad
        if self.kind == "sgd":
            self._sgd(param, grad)
        else:
            self._adam(param, grad)

    def _sgd(self, param: torch.Tensor, grad: torch.Tensor) -> None:
        if self.uses["weight_decay"]:  # in place: the gradient buffer is the stack's own
            grad = grad.addcmul_(param, self.weight_decay)
        if self.uses["momentum"]:  # a zero buffer reproduces torch's first step (buf = grad)
            grad = self.state["momentum_buffer"].mul_(self.momentum).add_(grad)
        param.addcmul_(grad, self.neg_lr)

    def _adam(self, param: torch.Tensor, grad: torch.Tensor) -> None:
        beta1, beta2 = self.betas
        if self.uses["weight_decay"]:
            if self.kind == "adamw":
                param.mul_(self.decay)
            else:
                grad = grad.addcmul_(param, self.weight_decay)
        exp_avg, exp_avg_sq = self.state["exp_avg"], self.state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** self.steps
        bias_correction2_sqrt = (1 - beta2 ** self.steps) ** 0.5
        # two work buffers reused every step: fresh (K, P) temporaries cost page faults
        denom, update = self._workspace()
        torch.sqrt(exp_avg_sq, out=denom).div_(bias_correction2_sqrt).add_(self.eps)
        neg_step_size = (self.lr / bias_correction1).neg().to(param.dtype)
        # torch: param + (-step_size * exp_avg) / denom, with one step size per member
        param.addcdiv_(torch.mul(exp_avg, neg_step_size, out=update), denom)

    def _workspace(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.work is None or self.work[0].shape != self.net.flat.shape:
            self.work = (torch.empty_like(self.net.flat), torch.empty_like(self.net.flat))
        return self.work

    def keep(self, positions: torch.Tensor) -> None:
        """Keep only the members at `positions` (indices into the current stack)."""
        on_device = positions.to(self.net.flat.device)
        self.state = {k: v[on_device] for k, v in self.state.items()}
        self.groups = [self.groups[p] for p in positions.tolist()]
        self._set_hyper({k: v[positions] for k, v in self.hyper.items()})

    def member_state_dict(self, k: int) -> dict[str, Any]:
        """Member k's optimizer as torch.optim's own `state_dict` (loadable into it)."""
        state: dict[int, dict[str, Any]] = {}
        needs_state = self.steps > 0 and (self.kind != "sgd" or self.hyper["momentum"][k] != 0)
        if needs_state:
            tensors = {key: self.layout.member(v, k) for key, v in self.state.items()}
            for i, name in enumerate(self.layout.shapes):
                entry = {key: tensors[key][name] for key in STATE_KEYS[self.kind]}
                if self.kind != "sgd":
                    entry = {"step": torch.tensor(float(self.steps)), **entry}
                state[i] = entry
        return {"state": state, "param_groups": copy.deepcopy(self.groups[k])}


def _one(values: set, what: str) -> Any:
    """The single value fused members share, or a ValueError naming what differs."""
    if len(values) != 1:
        raise ValueError(f"fused members must share one {what}, got {sorted(values)}")
    return next(iter(values))


def _member_tensors(model: nn.Module, optimizer: torch.optim.Optimizer, keys: tuple[str, ...]
                    ) -> tuple[int, dict[str, dict[str, torch.Tensor]]]:
    """A member's step count and its state tensors by name (zeros where torch has none yet)."""
    names = {id(p): n for n, p in model.named_parameters()}
    params = optimizer.param_groups[0]["params"]
    if [names.get(id(p)) for p in params] != list(names.values()):
        raise ValueError("a fused member's optimizer must hold all its model's parameters "
                         "in definition order")
    tensors: dict[str, dict[str, torch.Tensor]] = {key: {} for key in keys}
    steps = set()
    for p in params:
        entry = optimizer.state.get(p, {})
        steps.add(int(entry["step"]) if "step" in entry else int(bool(entry)))
        for key in keys:
            value = entry.get(key)
            tensors[key][names[id(p)]] = torch.zeros_like(p) if value is None else value
    return _one(steps, "step count across a member's parameters"), tensors
