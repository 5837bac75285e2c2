"""A user's own files: `csv:PATH` and `parquet:PATH` tables, `npz:PATH` NumPy arrays.

Each loader reads its format into arrays; `splits.from_arrays` does the rest (checks, labels,
official and carved splits), the same for every format.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from tune_hw.data.splits import Splits, from_arrays
from tune_hw.errors import UserError

LAYOUTS = ("image", "signal")  # a 3-D x: N x H x W images (the default) or N x C x L signals
NPZ_PARTS = {"train": ("x", "y"), "val": ("x_val", "y_val"), "test": ("x_test", "y_test")}


def existing_file(path: str, kind: str, form: str) -> Path:
    """`path` as a Path, or a UserError naming the dataset form (e.g. csv:PATH) to fix."""
    file = Path(path).expanduser()
    if not path or not file.is_file():
        raise UserError(f"{kind} file {path!r} does not exist: give an existing file as {form}")
    return file


# -------------------------------------------------------------------------------- tables

def load_csv(path: str, label: str = "label", val_fraction: float = 0.2,
             test_fraction: float = 0.2, seed: int = 0) -> Splits:
    """A CSV table: numeric feature columns plus one label column (any values)."""
    import pandas as pd

    file = existing_file(path, "csv", "csv:PATH")
    try:
        frame = pd.read_csv(file)
    except (ValueError, UnicodeDecodeError) as exc:  # pandas' ParserError is a ValueError
        raise UserError(f"csv file {file} cannot be read as CSV ({_first_line(exc)}): give a "
                        "comma-separated table with a header row") from None
    return _table_splits(frame, f"csv file {file}", label, val_fraction, test_fraction, seed)


def load_parquet(path: str, label: str = "label", val_fraction: float = 0.2,
                 test_fraction: float = 0.2, seed: int = 0) -> Splits:
    """A parquet table (read with pyarrow), like `csv:`: feature columns and a label column."""
    import pandas as pd

    file = existing_file(path, "parquet", "parquet:PATH")
    try:
        frame = pd.read_parquet(file, engine="pyarrow")
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise UserError(f"parquet file {file} cannot be read as parquet "
                        f"({_first_line(exc)}): write it with DataFrame.to_parquet") from None
    return _table_splits(frame, f"parquet file {file}", label, val_fraction, test_fraction, seed)


def _table_splits(frame, source: str, label: str, val_fraction: float, test_fraction: float,
                  seed: int) -> Splits:
    """Numeric columns are the features (others are ignored), `label` the class."""
    if label not in frame.columns:
        raise UserError(f"{source} has no column {label!r}: set dataset.label to one of "
                        f"{list(map(str, frame.columns))}")
    if frame[label].isna().any():
        raise UserError(f"{source}: column {label!r} has {int(frame[label].isna().sum())} "
                        "missing labels: drop those rows")
    features = frame.drop(columns=[label]).select_dtypes("number")
    if features.shape[1] == 0:
        raise UserError(f"{source} has no numeric feature column besides {label!r}")
    labels = frame[label].to_numpy()
    if labels.dtype == object:  # pandas keeps strings as objects; NumPy's str sorts them
        labels = labels.astype(str)
    parts = {"train": (features.to_numpy(dtype=np.float32), labels)}
    return from_arrays(source, parts, val_fraction, test_fraction, seed)


# ---------------------------------------------------------------------------------- npz

def load_npz(path: str, layout: str | None = None, val_fraction: float = 0.2,
             test_fraction: float = 0.2, seed: int = 0) -> Splits:
    """Arrays `x`, `y` and optionally `x_val`/`y_val`, `x_test`/`y_test` of an .npz file.

    Samples are `x.shape[1:]`: (L,) a vector or signal, (C, L) a signal with channels, (H, W) a
    greyscale image, (C, H, W) an image; `layout` (image | signal) settles a 3-D x.
    """
    file = existing_file(path, "npz", "npz:PATH")
    source = f"npz file {file}"
    if layout is not None and layout not in LAYOUTS:
        raise UserError(f"{source}: dataset.layout is {layout!r}: use one of {list(LAYOUTS)}")
    arrays = _read_npz(file, source)
    parts = {}
    for part, (x_key, y_key) in NPZ_PARTS.items():
        present = [key in arrays for key in (x_key, y_key)]
        if part == "train" or any(present):
            for key, here in zip((x_key, y_key), present, strict=True):
                if not here:
                    raise UserError(f"{source} has no array {key!r} (it has {sorted(arrays)}): "
                                    f"save it with np.savez(path, x=..., y=..., ...)")
            parts[part] = (sample_layout(arrays[x_key], layout, source, x_key), arrays[y_key])
    return from_arrays(source, parts, val_fraction, test_fraction, seed)


def _read_npz(file: Path, source: str) -> dict[str, np.ndarray]:
    """Every array of the archive, never unpickling (an object array is refused)."""
    fix = "save it with np.savez(path, x=..., y=...)"
    try:
        archive = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{source} is not an .npz archive ({_first_line(exc)}): {fix}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UserError(f"{source} is a single .npy array, not an .npz archive: {fix}")
    with archive:
        try:
            return {key: archive[key] for key in archive.files}
        except ValueError:  # an object array: loading it would unpickle
            raise UserError(f"{source} holds pickled Python objects, which are never loaded: "
                            "save strings as a NumPy str array (np.array(labels, dtype=str))"
                            ) from None
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            raise UserError(f"{source} is a damaged .npz archive ({_first_line(exc)}): "
                            f"{fix}") from None


def sample_layout(x: np.ndarray, layout: str | None, source: str, key: str = "x"
                  ) -> np.ndarray:
    """N x L and N x C x L stay; an N x H x W image gains its channel; N x C x H x W stays.

    Without a layout a 3-D x is greyscale images; `layout: signal` reads it as N x C x L.
    """
    if x.ndim < 2:
        return x  # from_arrays names the problem
    kind = layout or ("image" if x.ndim >= 3 else "signal")
    if x.ndim not in {"signal": (2, 3), "image": (3, 4)}[kind]:
        if layout is None:
            raise UserError(f"{source}: {key} has shape {x.shape}: samples must be (L,), "
                            "(C, L), (H, W) or (C, H, W)")
        wants = {"signal": "N x L or N x C x L", "image": "N x H x W or N x C x H x W"}[kind]
        raise UserError(f"{source}: layout {layout} needs {key} of shape {wants}, got "
                        f"{x.shape}: set dataset.layout to match (signal | image) or reshape")
    if x.ndim == 3 and kind == "image":
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        raise UserError(f"{source}: {key} has shape {x.shape}, which looks channels-last "
                        f"(N x H x W x C): store it as N x C x H x W, e.g. "
                        f"{key}.transpose(0, 3, 1, 2)")
    return x


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
