"""A study's distributions (tune_hw.distributions): parsed once, and what each one knows."""

import math

import pytest
from optuna import distributions as od

from tune_hw.distributions import Distribution, variant_label
from tune_hw.errors import StudyError


def parse(spec):
    return Distribution.parse(spec, "space.train.lr", "s.yaml")


@pytest.mark.parametrize("spec, grid_size, upper, edges", [
    ({"loguniform": [1e-4, 1.0]}, 1, 1.0, [1e-4, 1.0]),
    ({"uniform": [0, 2]}, 1, 2, [0.0, 2.0]),
    ({"int": [1, 30]}, 1, 30, [1, 30]),
    ({"choice": [16, 128, 4]}, 1, 128, [16, 128, 4]),
    ({"grid": [0.1, 0.01, 0.5]}, 3, 0.5, [0.1, 0.01, 0.5]),
])
def test_values_bounds_and_grid_size(spec, grid_size, upper, edges):
    dist = parse(spec)
    assert (dist.grid_size, dist.upper, dist.edge_values()) == (grid_size, upper, edges)
    assert [type(v) for v in dist.edge_values()] == [type(v) for v in edges]  # as drawn


@pytest.mark.parametrize("spec, message", [
    ({"normal": [0, 1]}, "must be one distribution of"),
    ({"uniform": [0, 1], "int": [0, 1]}, "must be one distribution of"),
    ({"choice": []}, "choice needs a non-empty list"),
    ({"uniform": [1.0]}, "uniform needs [low, high]"),
    ({"uniform": ["1e-4", 1.0]}, "'1e-4' is a string (YAML reads 1e-4 as text)"),
    ({"uniform": [0, math.inf]}, "bounds must be finite numbers"),
    ({"uniform": [True, 2]}, "bounds must be finite numbers"),
    ({"loguniform": [0.0, 1.0]}, "a log range must be > 0"),
    ({"int": [1, 2.5]}, "int bounds must be whole numbers"),
    ({"int": [3, 3]}, "low must be < high"),
])
def test_every_malformed_distribution_is_one_error_naming_file_and_key(spec, message):
    with pytest.raises(StudyError) as info:
        parse(spec)
    assert str(info.value).startswith("s.yaml: space.train.lr") and message in str(info.value)


def test_optuna_translation_widens_to_the_values_tried():
    lr = parse({"loguniform": [1e-4, 1.0]})
    assert lr.to_optuna() == od.FloatDistribution(1e-4, 1.0, log=True)
    assert lr.to_optuna([3.0, math.nan]) == od.FloatDistribution(1e-4, 3.0, log=True)
    assert parse({"int": [2, 8]}).to_optuna([1.5]) == od.IntDistribution(1, 8)
    choice = parse({"choice": [16, 128]})
    assert choice.to_optuna([16, 4]) == od.CategoricalDistribution([16, 128, 4])
    # Optuna's categoricals hold plain values: anything else is recorded as its text
    assert parse({"choice": [[1, 2], "a"]}).optuna_value([1, 2]) == "[1, 2]"
    assert parse({"int": [1, 8]}).optuna_value(3.0) == 3


def test_a_whole_section_space_lists_its_mappings_and_their_labels():
    section = parse({"grid": [{"name": "cnn", "kernel_size": 3}, {"residual": True}]})
    assert [variant_label(v) for v in section.mappings()] == ["cnn kernel_size=3",
                                                              "residual=True"]
    assert parse({"grid": [1, {"name": "cnn"}]}).mappings() == []
