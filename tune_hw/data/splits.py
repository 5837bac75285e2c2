"""`Split`/`Splits` and the one way every dataset becomes them: checked arrays, labels mapped to
0..k-1, official splits kept, missing validation/test splits carved from the training rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tune_hw.errors import UserError

PART_SUFFIX = {"train": "", "val": "_val", "test": "_test"}  # x / x_val / x_test in messages


@dataclass
class Split:
    """Inputs `x` (float32, N x *in_shape) and integer labels `y` (N)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: str | torch.device) -> Split:
        return Split(self.x.to(device), self.y.to(device))

    def rows(self, index: torch.Tensor | slice) -> Split:
        return Split(self.x[index], self.y[index])


@dataclass
class Splits:
    """Train / validation / test tensors of one dataset; test never feeds any choice."""

    train: Split
    val: Split
    test: Split
    num_classes: int

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def to(self, device: str | torch.device) -> Splits:
        return Splits(self.train.to(device), self.val.to(device), self.test.to(device),
                      self.num_classes)


def carve(train: Split, val_fraction: float, test_fraction: float, seed: int,
          val: Split | None = None, test: Split | None = None, source: str = "dataset"
          ) -> Splits:
    """Keep the official `val`/`test` splits; carve the missing ones from a seeded permutation
    of the training rows (validation first, then test), so the splits are disjoint."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    n_val = 0 if val is not None else int(len(train) * val_fraction)
    n_test = 0 if test is not None else int(len(train) * test_fraction)
    val = val if val is not None else train.rows(order[:n_val])
    test = test if test is not None else train.rows(order[n_val:n_val + n_test])
    splits = Splits(train.rows(order[n_val + n_test:]), val, test, 0)
    for part, size in splits.sizes().items():
        if size == 0:
            raise UserError(f"{source}: the {part} split is empty (val_fraction {val_fraction}, "
                            f"test_fraction {test_fraction} of {len(train)} rows): give more "
                            "rows or change the fractions")
    splits.num_classes = int(max(int(s.y.max()) for s in (splits.train, val, test))) + 1
    return splits


def cap_train(splits: Splits, n_train: int | None) -> Splits:
    """Keep the first `n_train` training rows (few-label regimes); val/test stay as they are."""
    if n_train is not None:
        splits.train = splits.train.rows(slice(0, n_train))
    return splits


def from_arrays(source: str, parts: dict[str, tuple[np.ndarray, np.ndarray]],
                val_fraction: float, test_fraction: float, seed: int) -> Splits:
    """User or generated arrays -> `Splits`: `parts` has "train" and optionally "val"/"test".

    Every array is checked (one row per label, finite numbers, one sample shape, two classes
    at least); labels of any integer or string values map to 0..k-1 in sorted order.
    """
    for part, (x, y) in parts.items():
        _check_part(source, PART_SUFFIX[part], x, y)
    shapes = {part: x.shape[1:] for part, (x, _) in parts.items()}
    for part, shape in shapes.items():
        if shape != shapes["train"]:
            raise UserError(f"{source}: x{PART_SUFFIX[part]} has samples of shape {shape} but "
                            f"x has {shapes['train']}: every split needs one sample shape")
    codes = label_codes(source, [y for _, y in parts.values()])
    split = {part: Split(to_tensor(x), code) for (part, (x, _)), code in zip(parts.items(),
                                                                           codes, strict=True)}
    return carve(split["train"], val_fraction, test_fraction, seed, split.get("val"),
                 split.get("test"), source)


def _check_part(source: str, suffix: str, x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim < 2:
        raise UserError(f"{source}: x{suffix} has shape {x.shape}: give one row per sample, "
                        "e.g. x.reshape(-1, 1) for one feature")
    if y.ndim != 1:
        raise UserError(f"{source}: y{suffix} has shape {y.shape}: give one label per row "
                        "(for one-hot labels, y.argmax(1))")
    if len(x) != len(y):
        raise UserError(f"{source}: x{suffix} has {len(x)} rows but y{suffix} has {len(y)}: "
                        "give one label per row")
    if len(x) == 0:
        raise UserError(f"{source}: x{suffix} has no rows")
    if x.dtype.kind not in "biuf":
        raise UserError(f"{source}: x{suffix} holds {x.dtype} values: inputs must be numbers")
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(1) if x.dtype.kind == "f" else None
    if bad is not None and bad.any():
        raise UserError(f"{source}: x{suffix} holds non-finite values (NaN or inf) in "
                        f"{int(bad.sum())} rows, the first is row {int(bad.argmax())}: drop or "
                        "impute them")


def label_codes(source: str, labels: list[np.ndarray]) -> list[torch.Tensor]:
    """Map labels of all splits together to 0..k-1 (sorted values); k must be at least 2."""
    every = np.concatenate(labels)  # one dtype for all splits (ints next to strings: strings)
    if every.dtype.kind not in "biufUS":
        raise UserError(f"{source}: y holds {every.dtype} values: labels must be integers or "
                        "strings")
    if every.dtype.kind == "f" and not np.isfinite(every).all():
        raise UserError(f"{source}: y holds missing labels (NaN): drop those rows")
    if every.dtype.kind == "f" and not (every == np.round(every)).all():
        raise UserError(f"{source}: y holds non-integer numbers: labels must be classes "
                        "(integers or strings), tune_hw trains classifiers")
    classes, codes = np.unique(every, return_inverse=True)
    if len(classes) < 2:
        raise UserError(f"{source}: y holds a single class ({classes[0].item()!r}): a "
                        "classifier needs at least two")
    ends = np.cumsum([len(y) for y in labels])[:-1]
    return [torch.as_tensor(part, dtype=torch.long) for part in np.split(codes, ends)]


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """float32 inputs; 8-bit values (images) are scaled to [0, 1] like torchvision's ToTensor."""
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x)).float() / 255.0
    return torch.tensor(np.asarray(x, dtype=np.float32))  # a copy: file arrays may be read-only
