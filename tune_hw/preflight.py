"""Before any trial: load every dataset variant and build every model variant of a study once in
the driver, so a mistake stops the search before Ray starts.
"""

from __future__ import annotations

from typing import Any

from tune_hw import data, models, studies
from tune_hw.errors import UserError
from tune_hw.studies import Study


def preflight(study: Study) -> dict[str, int] | None:
    """Load every dataset variant and build every model variant once in the driver, so mistakes
    stop here; each dataset is released after its checks (the driver never trains on it).

    Returns the split sizes when every variant has the same ones (trials record their own).
    """
    sizes = [_check_dataset_variant(study, dataset)
             for dataset in studies.section_variants(study, "dataset")]
    return sizes[0] if all(s == sizes[0] for s in sizes) else None


def _check_dataset_variant(study: Study, dataset: dict[str, Any]) -> dict[str, int]:
    """Load one dataset variant (not through the trials' per-process cache) and build every
    model variant on it; the split sizes."""
    splits = data.load(dataset["name"], **{k: v for k, v in dataset.items() if k != "name"})
    sizes = splits.sizes()
    empty = [name for name, n in sizes.items() if n == 0]
    if empty:
        raise UserError(f"{study.path}: dataset {dataset} has an empty {empty[0]} split: give "
                        "it more rows (n_train, n_val, n_test or the fractions)")
    batch_size = max(v["batch_size"] for v in studies.section_variants(study, "train"))
    if batch_size > sizes["train"]:
        raise UserError(f"{study.path}: train.batch_size {batch_size} is larger than the "
                        f"{sizes['train']} training rows of {dataset['name']}: lower it or raise "
                        "dataset.n_train")
    for model in studies.section_variants(study, "model"):
        hp = {k: v for k, v in model.items() if k != "name"}
        models.build(model["name"], splits.in_shape, splits.num_classes, **hp)
    return sizes
