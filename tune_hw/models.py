"""Model registry: `build(name, in_shape, num_classes, **hp)` for every architecture of a study."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tune_hw import baselines
from tune_hw.errors import UserError

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


def build_mlp(in_shape: tuple[int, ...], num_classes: int, width: int = 64, depth: int = 2,
              norm: str = "none", residual: bool = False, activation: str = "relu") -> nn.Module:
    """A width x depth MLP; `norm` is none | batch | layer; depth counts hidden blocks."""
    _check_choice("norm", norm, NORMS)
    _check_choice("activation", activation, ACTIVATIONS)
    in_features = int(torch.tensor(in_shape).prod())
    return MLP(in_features, num_classes, width, depth, norm, residual, activation)


CONV_LAYERS = {1: (nn.Conv1d, nn.BatchNorm1d, nn.AdaptiveAvgPool1d),  # signals: (L,), (C, L)
               2: (nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d)}  # images: (C, H, W)


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
        load_backbone(net, weights)
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


def load_backbone(net: nn.Module, weights: str) -> None:
    """Copy every pretrained tensor whose name and shape match; the head is always new."""
    state = pretrained_state(weights)
    state = {k.removeprefix("net."): v for k, v in state.items()}
    own = net.state_dict()
    usable = {k: v for k, v in state.items()
              if k in own and v.shape == own[k].shape and not k.startswith("fc.")}
    backbone = [k for k in own if not k.startswith("fc.")]
    if len(usable) < len(backbone) // 2:
        raise UserError(f"weights {weights!r} do not fit this resnet18: only {len(usable)} of "
                        f"{len(backbone)} backbone tensors match by name and shape")
    net.load_state_dict(usable, strict=False)


def pretrained_state(weights: str) -> dict[str, torch.Tensor]:
    """A state_dict from imagenet, a file or an earlier run, loaded with weights_only=True."""
    if weights == "imagenet":
        import torchvision

        try:
            return torchvision.models.ResNet18_Weights.IMAGENET1K_V1.get_state_dict(
                progress=False)
        except Exception as exc:  # offline and not in the torch cache
            raise UserError(f"imagenet weights for resnet18 are not in the torch cache and "
                            f"could not be downloaded ({exc}); pass a state_dict path") from None
    if weights.startswith("run:"):
        from tune_hw.checkpoints import best_run_checkpoint

        path = best_run_checkpoint(weights[4:])
    else:
        path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist: give a state_dict saved with "
                        "torch.save(model.state_dict(), path)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"weights file {path} cannot be loaded safely ({type(exc).__name__}); "
                        "only plain state_dicts of tensors are accepted") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"weights file {path} holds no model tensors: give a state_dict or a "
                        "tune_hw checkpoint of a neural trial")
    return state


MODELS: dict[str, Callable[..., Any]] = {
    "mlp": build_mlp,
    "cnn": build_cnn,
    "resnet18": build_resnet18,
    "hist_gradient_boosting": baselines.build_hist_gradient_boosting,  # trees, not a Module
}


def hyperparameters(name: str) -> dict[str, Any]:
    """The hyperparameters model `name` takes, with their defaults."""
    params = inspect.signature(model_builder(name)).parameters
    return {k: p.default for k, p in params.items() if k not in ("in_shape", "num_classes")}


def model_builder(name: str) -> Callable[..., Any]:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}: use one of {sorted(MODELS)}")
    return MODELS[name]


def build(name: str, in_shape: tuple[int, ...], num_classes: int, **hp: Any
          ) -> nn.Module | baselines.TreeBaseline:
    """Build model `name`; unknown names or hyperparameters are `UserError`s listing valid ones."""
    unknown = set(hp) - set(hyperparameters(name))
    if unknown:
        raise UserError(f"model {name!r} has no hyperparameter(s) {sorted(unknown)}: it takes "
                        f"{sorted(hyperparameters(name))}")
    return model_builder(name)(tuple(in_shape), num_classes, **hp)


def _check_choice(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise UserError(f"model.{key} is {value!r}: use one of {list(allowed)}")
