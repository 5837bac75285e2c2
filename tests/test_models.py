"""The model registry and factory (tune_hw.models): every registered model builds by name."""


import pytest
import torch

from tune_hw import data, models, trees
from tune_hw.errors import UserError

CASES = [  # every registered model, on the shapes of a dataset it is studied on
    ("mlp", "countries", {"width": 16, "depth": 3, "norm": "batch", "residual": True}),
    ("mlp", "digits", {"width": 16, "depth": 2, "norm": "layer", "activation": "tanh"}),
    ("cnn", "digits", {"kernel_size": 5, "channels": 8, "depth": 2, "norm": "batch"}),
    ("cnn", "mnist1d", {"kernel_size": 5, "channels": 8, "depth": 2, "norm": "batch"}),
    ("mlp", "mnist1d", {"width": 16, "depth": 1}),
    ("resnet18", "digits", {"mode": "scratch"}),
]


def test_every_registered_model_has_a_case():
    # the tree baseline is no torch Module: tests/test_trees.py covers it
    assert {name for name, _, _ in CASES} == set(models.names()) - trees.TREE_MODELS


@pytest.mark.parametrize("name, dataset, hp", CASES)
def test_model_builds_and_runs_forward_backward(name, dataset, hp):
    options = {"n_train": 64, "n_val": 8, "n_test": 8} if dataset == "countries" else {}
    splits = data.load(dataset, **options)
    model = models.build(name, splits.in_shape, splits.num_classes, **hp)
    logits = model(splits.train.x[:16])
    assert logits.shape == (16, splits.num_classes)
    torch.nn.functional.cross_entropy(logits, splits.train.y[:16]).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_unknown_model_and_hyperparameter_errors_list_valid_names():
    with pytest.raises(UserError, match=r"unknown model 'vit': use one of \['cnn', "
                                        r"'hist_gradient_boosting', 'mlp'"):
        models.build("vit", (2,), 10)
    with pytest.raises(UserError, match="has no hyperparameter.*'colour'.*it takes"):
        models.build("mlp", (2,), 10, colour="red")
    with pytest.raises(UserError, match="model.norm is 'group'"):
        models.build("mlp", (2,), 10, norm="group")
