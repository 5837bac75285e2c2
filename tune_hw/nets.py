"""The neural architectures of a study: MLP, CNN (1-D and 2-D), ResNet-18 and its linear probe.

Each builder registers itself (`model_registry`); `models.build` builds them by name.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tune_hw import pretrained
from tune_hw.errors import UserError
from tune_hw.model_registry import register_model

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
NORMS = ("none", "batch", "layer")


def _norm_1d(norm: str, width: int) -> nn.Module:
    return {"none": nn.Identity, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}[norm](width)


class Block(nn.Module):
    """Linear -> norm -> activation, optionally added to its input (residual)."""

    def __init__(self, width: int, norm: str, activation: str, residual: bool):
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.norm = _norm_1d(norm, width)
        self.act = ACTIVATIONS[activation]()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm(self.linear(x)))
        return x + out if self.residual else out


class MLP(nn.Module):
    """Input projection, `depth` hidden blocks of `width`, linear head."""

    def __init__(self, in_features: int, num_classes: int, width: int, depth: int, norm: str,
                 residual: bool, activation: str):
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(in_features, width),
                                  ACTIVATIONS[activation]())
        self.blocks = nn.Sequential(*(Block(width, norm, activation, residual)
                                      for _ in range(depth)))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


@register_model("mlp")
def build_mlp(in_shape: tuple[int, ...], num_classes: int, width: int = 64, depth: int = 2,
              norm: str = "none", residual: bool = False, activation: str = "relu") -> nn.Module:
    """A width x depth MLP; `norm` is none | batch | layer; depth counts hidden blocks."""
    _check_choice("norm", norm, NORMS)
    _check_choice("activation", activation, ACTIVATIONS)
    in_features = int(torch.tensor(in_shape).prod())
    return MLP(in_features, num_classes, width, depth, norm, residual, activation)


CONV_LAYERS = {1: (nn.Conv1d, nn.BatchNorm1d, nn.AdaptiveAvgPool1d),  # signals: (L,), (C, L)
               2: (nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d)}  # images: (C, H, W)


@register_model("cnn")
def build_cnn(in_shape: tuple[int, ...], num_classes: int, kernel_size: int = 3,
              channels: int = 32, depth: int = 2, norm: str = "none") -> nn.Module:
    """`depth` same-padded conv layers of `kernel_size`, global average pool, linear head.

    Conv1d on signals ((L,) or (C, L)), Conv2d on images (C, H, W). The global pool is
    deliberate: with kernel_size 1 the net sees no spatial structure, which is the
    underfitting case the architectures studies ask about.
    """
    _check_choice("norm", norm, ("none", "batch"))
    if len(in_shape) not in (1, 2, 3):
        raise UserError(f"cnn needs a signal (L or C x L) or an image (C x H x W), got shape "
                        f"{in_shape}: use mlp, which flattens any shape")
    conv, batch_norm, pool = CONV_LAYERS[1 if len(in_shape) < 3 else 2]
    layers: list[nn.Module] = [nn.Unflatten(1, (1, in_shape[0]))] if len(in_shape) == 1 else []
    in_ch = 1 if len(in_shape) == 1 else in_shape[0]
    for _ in range(depth):
        layers += [conv(in_ch, channels, kernel_size, padding="same"),
                   batch_norm(channels) if norm == "batch" else nn.Identity(), nn.ReLU()]
        in_ch = channels
    return nn.Sequential(*layers, pool(1), nn.Flatten(), nn.Linear(in_ch, num_classes))


class LinearProbe(nn.Module):
    """A frozen backbone (kept in eval mode so BatchNorm statistics stay put), a trained head."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        for name, param in net.named_parameters():
            param.requires_grad = name.startswith("fc.")

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        for name, module in self.net.named_children():
            if name != "fc":
                module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_model("resnet18")
def build_resnet18(in_shape: tuple[int, ...], num_classes: int, mode: str = "scratch",
                   weights: str = "none", backbone_lr: float = 1.0) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stem for small images and any channel count.

    `mode`: scratch | linear_probe | finetune; `weights`: none | imagenet | a state_dict
    path | run:<study>/<run_name> (the best checkpoint of an earlier tune_hw run);
    `backbone_lr` (finetune): the backbone's learning rate as a multiple of train.lr (the new
    head keeps train.lr), so pretrained features move slower than the head that reads them.
    """
    import torchvision

    _check_choice("mode", mode, ("scratch", "linear_probe", "finetune"))
    if mode != "scratch" and weights == "none":
        raise UserError(f"resnet18 mode {mode!r} needs pretrained weights: set model.weights "
                        "to imagenet, a state_dict path or run:<study>/<run_name>")
    if backbone_lr <= 0 or (backbone_lr != 1.0 and mode != "finetune"):
        raise UserError(f"model.backbone_lr is {backbone_lr}: it must be > 0 and applies to "
                        "mode finetune only (linear_probe freezes the backbone)")
    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if in_shape[1] <= 64:  # small images: a stride-1 3x3 stem and no max-pool keep resolution
        net.conv1 = nn.Conv2d(in_shape[0], 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_shape[0] != 3:
        net.conv1 = nn.Conv2d(in_shape[0], 64, 7, stride=2, padding=3, bias=False)
    if mode != "scratch":
        pretrained.load_backbone(net, weights)
    net.backbone_lr = backbone_lr  # read by parameter_groups when the optimizer is built
    return LinearProbe(net) if mode == "linear_probe" else net


def parameter_groups(model: nn.Module, lr: float) -> list[dict[str, Any]]:
    """Trainable parameters as optimizer groups; a fine-tuned backbone may get a lower lr.

    The head (`fc.*`) comes first, so the reported lr is train.lr.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    scale = getattr(model, "backbone_lr", 1.0)
    if scale == 1.0:
        return [{"params": [p for _, p in params]}]
    head = [p for n, p in params if n.startswith("fc.")]
    backbone = [p for n, p in params if not n.startswith("fc.")]
    return [{"params": head}, {"params": backbone, "lr": lr * scale}]


def linear_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Weights of every linear/conv layer, input side first (module definition order): the
    layers whose gradient norms a trial tracks."""
    return [(name, module.weight) for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d))
            and module.weight.requires_grad]


def _check_choice(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise UserError(f"model.{key} is {value!r}: use one of {list(allowed)}")
