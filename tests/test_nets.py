"""The neural architectures (tune_hw.nets): shapes, layers, linear probe, fine-tuning."""

import pytest
import torch

from tune_hw import data, models, nets
from tune_hw.errors import UserError


@pytest.mark.parametrize("in_shape", [(40,), (3, 40)])
def test_cnn_on_signals_is_a_conv1d_net_with_batchnorm1d(in_shape):
    model = models.build("cnn", in_shape, 4, kernel_size=5, channels=6, depth=3, norm="batch")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d)]
    assert len(convs) == 3 and convs[0].in_channels == (in_shape[0] if len(in_shape) == 2 else 1)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules()) == 3
    assert not any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    x = torch.randn(8, *in_shape, requires_grad=True)
    logits = model(x)
    assert logits.shape == (8, 4)
    torch.nn.functional.cross_entropy(logits, torch.arange(8) % 4).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # same padding: every position keeps its own output, so the input gradient covers all 40
    assert (x.grad.abs().sum(0) > 0).all()
    # kernel_size, channels and depth mean what they mean in 2-D: k*c_in*c_out + c_out per conv
    c_in = in_shape[0] if len(in_shape) == 2 else 1
    assert sum(p.numel() for p in model.parameters()) == \
        (5 * c_in * 6 + 6) + 2 * (5 * 6 * 6 + 6) + 3 * 2 * 6 + (6 * 4 + 4)


def test_cnn_with_kernel_size_1_sees_one_position_at_a_time():
    # kernel 1 + global pooling: permuting the positions cannot change the output; kernel 3 can
    torch.manual_seed(0)
    x = torch.randn(16, 2, 40)
    order = torch.randperm(40)
    for kernel_size, invariant in ((1, True), (3, False)):
        model = models.build("cnn", (2, 40), 5, kernel_size=kernel_size, channels=8,
                             depth=3, norm="batch").eval()
        same = torch.allclose(model(x), model(x[:, :, order]), atol=1e-5)
        assert same == invariant, kernel_size


def test_cnn_refuses_shapes_it_cannot_convolve():
    with pytest.raises(UserError, match=r"cnn needs a signal .* got shape \(1, 2, 3, 4\)"):
        models.build("cnn", (1, 2, 3, 4), 3)


def test_mlp_flattens_any_shape():
    for shape in ((40,), (3, 40), (8, 8), (3, 8, 8)):
        assert models.build("mlp", shape, 3, width=8)(torch.randn(2, *shape)).shape == (2, 3)


def test_mlp_depth_counts_hidden_blocks():
    model = models.build("mlp", (2,), 10, width=8, depth=100)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 102  # input projection + 100 blocks + head


def test_linear_probe_trains_only_the_head_and_keeps_backbone_statistics(tmp_path):
    source = models.build("resnet18", (1, 8, 8), 5)
    path = tmp_path / "source.pt"
    torch.save(source.state_dict(), path)
    probe = models.build("resnet18", (1, 8, 8), 3, mode="linear_probe", weights=str(path))
    trainable = [n for n, p in probe.named_parameters() if p.requires_grad]
    assert trainable == ["net.fc.weight", "net.fc.bias"]
    assert torch.equal(probe.net.conv1.weight, source.conv1.weight)
    probe.train()
    assert not probe.net.bn1.training and probe.net.fc.training
    before = probe.net.bn1.running_mean.clone()
    probe(torch.rand(8, 1, 8, 8))
    assert torch.equal(before, probe.net.bn1.running_mean)


def test_finetune_backbone_lr_gives_the_backbone_its_own_optimizer_group(tmp_path):
    path = tmp_path / "source.pt"
    torch.save(models.build("resnet18", (1, 8, 8), 5).state_dict(), path)
    net = models.build("resnet18", (1, 8, 8), 3, mode="finetune", weights=str(path),
                       backbone_lr=0.1)
    head, backbone = nets.parameter_groups(net, 0.5)
    assert len(head["params"]) == 2 and "lr" not in head  # fc weight and bias: train.lr
    assert backbone["lr"] == pytest.approx(0.05)
    assert len(head["params"]) + len(backbone["params"]) == len(list(net.parameters()))
    plain = models.build("mlp", (2,), 3)
    assert nets.parameter_groups(plain, 0.5) == [{"params": list(plain.parameters())}]
    with pytest.raises(UserError, match="applies to mode finetune only"):
        models.build("resnet18", (1, 8, 8), 3, backbone_lr=0.1)


def test_plain_depth_100_relu_net_vanishes_and_residual_batchnorm_does_not():
    # the deep study's claim at initialisation: PyTorch's default init shrinks the backward
    # signal of a plain ReLU stack ~0.4x per layer; residual + BatchNorm keeps it
    splits = data.load("countries", n_train=256, n_val=8, n_test=8)
    norms = {}
    for residual, norm in ((False, "none"), (True, "batch")):
        torch.manual_seed(0)
        model = models.build("mlp", (2,), 10, width=64, depth=100, residual=residual, norm=norm)
        torch.nn.functional.cross_entropy(model(splits.train.x), splits.train.y).backward()
        norms[norm] = (model.stem[1].weight.grad.norm(), model.head.weight.grad.norm())
    plain_first, plain_last = norms["none"]
    assert plain_last > 0 and plain_first < 1e-10 * plain_last
    bn_first, bn_last = norms["batch"]
    assert bn_first > 1e-2 * bn_last
