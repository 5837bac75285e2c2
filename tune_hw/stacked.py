"""K models of one architecture as one stacked network: every layer runs all members at once.

`StackedNet.from_modules(models)` stacks ordinary `mlp`/`cnn` models (built by `models.build`)
so member k starts bit-identical to `models[k]`; `member_state_dict(k)` gives member k back as
an ordinary `state_dict`. Activations are logically `(K, B, ...)` (member first). Mechanism,
chosen by measurement (benchmarks/fusion.py, "mechanism"): grouped operations, not
`torch.func.vmap` -- linear layers are one batched matmul (`baddbmm`), convolutions one grouped
convolution (`groups=K`), BatchNorm one `batch_norm` over K x C channels (so each member keeps
its own batch statistics and running buffers), LayerNorm one call plus a per-member affine.

Parameters live in one (K, P) buffer (`FlatLayout`), a row per member, so the stacked optimizer
updates every parameter of every member in a few element-wise kernels with per-member settings
broadcast as (K, 1) columns, and removing a member is one row index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tune_hw import nets

Op = Callable[[torch.Tensor], torch.Tensor]
CONVS = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d}  # a 3-D conv would slot in the same way
POOLS = {nn.AdaptiveAvgPool1d: F.adaptive_avg_pool1d, nn.AdaptiveAvgPool2d: F.adaptive_avg_pool2d}
ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.GELU, nn.Identity)  # parameter-free: run as they are
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
CHAINS = (nn.Sequential, nets.MLP)  # modules whose forward runs their children in order


class FlatLayout:
    """Where each named parameter sits in a (K, P) buffer: member k's row holds its P values."""

    def __init__(self, shapes: dict[str, torch.Size]):
        self.shapes = dict(shapes)
        self.offsets, start = {}, 0
        for name, shape in self.shapes.items():
            self.offsets[name] = (start, start + shape.numel())
            start += shape.numel()
        self.size = start  # parameters of one member

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views `(K, *shape)` of each parameter (they share the buffer's memory)."""
        return {name: flat[:, a:b].view(len(flat), *self.shapes[name])
                for name, (a, b) in self.offsets.items()}

    def stack(self, members: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
        """One (K, P) buffer from each member's tensors by name."""
        return torch.stack([torch.cat([m[name].detach().reshape(-1) for name in self.shapes])
                            for m in members])

    def member(self, flat: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        """Member k's tensors, copied out (a view would save the whole buffer)."""
        return {name: flat[k, a:b].view(self.shapes[name]).clone()
                for name, (a, b) in self.offsets.items()}


# ------------------------------------------------------------------------ stacked layouts

def channels_stacked(x: torch.Tensor) -> torch.Tensor:
    """(K, B, C, *spatial) -> (B, K*C, *spatial): member k's channels are group k of a conv.

    A view when the tensor already lies in that order (the output of a previous conv).
    """
    return x.transpose(0, 1).reshape(x.shape[1], x.shape[0] * x.shape[2], *x.shape[3:])


def members_first(y: torch.Tensor, members: int) -> torch.Tensor:
    """(B, K*C, *spatial) -> (K, B, C, *spatial), a view."""
    return y.view(y.shape[0], members, y.shape[1] // members, *y.shape[2:]).transpose(0, 1)


# ------------------------------------------------------------------------------ the ops

class StackedNet:
    """K members' parameters (a flat buffer), buffers and a forward compiled from the template."""

    def __init__(self, template: nn.Module, layout: FlatLayout, flat: torch.Tensor,
                 buffers: dict[str, torch.Tensor]):
        self.template, self.layout, self.buffers = template, layout, buffers
        self.training = True
        self.pending_batches = 0  # training forwards not yet added to num_batches_tracked
        self._set_flat(flat)
        self.forward = compile_module(template, "", self)
        self.tracked = [f"{name}.weight" for name, _ in nets.linear_weights(template)]

    @classmethod
    def from_modules(cls, modules: Sequence[nn.Module]) -> StackedNet:
        """Stack ordinary models of one architecture (same types and shapes) member by member."""
        template = modules[0]
        reference = [(n, t.shape) for n, t in template.state_dict().items()]
        for module in modules[1:]:
            if [(n, t.shape) for n, t in module.state_dict().items()] != reference or \
                    [type(m) for m in module.modules()] != [type(m) for m in template.modules()]:
                raise ValueError("fused members must share one architecture and its sizes")
        params = [dict(m.named_parameters()) for m in modules]
        layout = FlatLayout({n: p.shape for n, p in params[0].items()})
        member_buffers = [dict(m.named_buffers()) for m in modules]
        buffers = {name: torch.stack([b[name].detach() for b in member_buffers])
                   for name in member_buffers[0]}
        return cls(template, layout, layout.stack(params), buffers)

    @property
    def members(self) -> int:
        return len(self.flat)

    def _set_flat(self, flat: torch.Tensor) -> None:
        """Parameters as leaf views of `flat`; their gradients as views of one `grad` buffer."""
        self.flat, self.grad = flat, torch.zeros_like(flat)
        self.params = self.layout.views(flat)
        for param, grad in zip(self.params.values(), self.layout.views(self.grad).values(),
                               strict=True):
            param.requires_grad_(True)
            param.grad = grad  # autograd accumulates into it in place: zero `grad` per step

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (K, B, classes) for inputs (K, B, *in_shape), one batch per member."""
        if self.training:
            self.pending_batches += 1
        return self.forward(x)

    def train(self, mode: bool = True) -> StackedNet:
        self.training = mode
        return self

    def eval(self) -> StackedNet:
        return self.train(False)

    def grad_norms(self) -> torch.Tensor:
        """(layers, K): each tracked weight's gradient norm per member, input side first."""
        return torch.stack([self.params[name].grad.flatten(1).norm(dim=1)
                            for name in self.tracked])

    def _sync_batch_counts(self) -> None:
        for name, buffer in self.buffers.items():
            if name.endswith("num_batches_tracked"):
                buffer += self.pending_batches
        self.pending_batches = 0

    def keep(self, positions: torch.Tensor) -> None:
        """Keep only the members at `positions` (indices into the current stack)."""
        self._sync_batch_counts()
        positions = positions.to(self.flat.device)
        self.buffers = {n: b[positions] for n, b in self.buffers.items()}
        self._set_flat(self.flat.detach()[positions])

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member k (position in the stack) as the ordinary model's `state_dict`."""
        self._sync_batch_counts()
        params = self.layout.member(self.flat.detach(), k)
        return {name: params[name] if name in params else self.buffers[name][k].clone()
                for name in self.template.state_dict()}


def compile_module(module: nn.Module, prefix: str, net: StackedNet) -> Op:
    """The stacked forward of `module` (prefix: its name in the template), as one closure."""
    if isinstance(module, CHAINS):
        ops = [compile_module(child, f"{prefix}{name}.", net)
               for name, child in module.named_children()]
        return lambda x: _chain(ops, x)
    if isinstance(module, nets.Block):
        return _block(module, prefix, net)
    if isinstance(module, ELEMENTWISE):
        return module
    if isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
        return lambda x: x.flatten(2)
    for kinds, build in ((nn.Linear, _linear), (tuple(CONVS), _conv), (BATCH_NORMS, _batch_norm),
                         (nn.LayerNorm, _layer_norm), (tuple(POOLS), _pool)):
        if isinstance(module, kinds):
            return build(module, prefix, net)
    raise TypeError(f"cannot stack {type(module).__name__}: fused training supports mlp and "
                    "cnn models (Linear, Conv1d/2d, BatchNorm, LayerNorm, ReLU/Tanh/GELU)")


def _chain(ops: list[Op], x: torch.Tensor) -> torch.Tensor:
    for op in ops:
        x = op(x)
    return x


def _block(block: nets.Block, prefix: str, net: StackedNet) -> Op:
    """nets.Block: Linear -> norm -> activation, added to its input when residual."""
    linear = _linear(block.linear, f"{prefix}linear.", net)
    norm = compile_module(block.norm, f"{prefix}norm.", net)
    act, residual = block.act, block.residual

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = act(norm(linear(x)))
        return x + out if residual else out
    return forward


def _linear(module: nn.Linear, prefix: str, net: StackedNet) -> Op:
    """x (K, B, in) -> (K, B, out): one batched matmul with each member's own weight."""
    weight, bias = f"{prefix}weight", f"{prefix}bias"
    if module.bias is None:
        return lambda x: torch.bmm(x, net.params[weight].transpose(1, 2))
    return lambda x: torch.baddbmm(net.params[bias].unsqueeze(1), x,
                                   net.params[weight].transpose(1, 2))


def _conv(module: nn.Conv1d | nn.Conv2d, prefix: str, net: StackedNet) -> Op:
    """One grouped convolution: member k's channels are group k (of K * module.groups)."""
    if module.padding_mode != "zeros":
        raise TypeError(f"cannot stack a conv with padding_mode {module.padding_mode!r}")
    conv, weight, bias = CONVS[type(module)], f"{prefix}weight", f"{prefix}bias"
    options = {"stride": module.stride, "padding": module.padding, "dilation": module.dilation}

    def forward(x: torch.Tensor) -> torch.Tensor:
        members, w = x.shape[0], net.params[weight]
        b = net.params[bias].reshape(-1) if module.bias is not None else None
        y = conv(channels_stacked(x), w.reshape(-1, *w.shape[2:]), b,
                 groups=members * module.groups, **options)
        return members_first(y, members)
    return forward


def _batch_norm(module: nn.BatchNorm1d | nn.BatchNorm2d, prefix: str, net: StackedNet) -> Op:
    """One batch_norm over K x C channels: statistics and running buffers per member."""
    if module.momentum is None or not (module.affine and module.track_running_stats):
        raise TypeError("cannot stack a BatchNorm without affine, running stats or momentum")
    names = [f"{prefix}{n}" for n in ("running_mean", "running_var", "weight", "bias")]

    def forward(x: torch.Tensor) -> torch.Tensor:
        mean, var = (net.buffers[n].view(-1) for n in names[:2])
        weight, bias = (net.params[n].reshape(-1) for n in names[2:])
        y = F.batch_norm(channels_stacked(x), mean, var, weight, bias, net.training,
                         module.momentum, module.eps)
        y = members_first(y, x.shape[0])
        # keep the input's layout: some element-wise kernels (GELU) round differently on a
        # permuted tensor than on the unfused model's contiguous one
        return y.contiguous() if x.is_contiguous() else y
    return forward


def _layer_norm(module: nn.LayerNorm, prefix: str, net: StackedNet) -> Op:
    """Normalise each sample over its features, then each member's own scale and shift."""
    if not module.elementwise_affine or module.bias is None or len(module.normalized_shape) != 1:
        raise TypeError("cannot stack a LayerNorm without affine weight and bias over one dim")
    weight, bias = f"{prefix}weight", f"{prefix}bias"

    def forward(x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
        return torch.addcmul(net.params[bias].unsqueeze(1), y, net.params[weight].unsqueeze(1))
    return forward


def _pool(module: nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d, prefix: str,
          net: StackedNet) -> Op:
    pool = POOLS[type(module)]
    return lambda x: members_first(pool(channels_stacked(x), module.output_size), x.shape[0])
