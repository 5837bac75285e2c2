"""`imagefolder:DIR`: torchvision's ImageFolder layout (DIR/<class>/<image>), or DIR/train,
DIR/val, DIR/test each in that layout.

Images are decoded once and cached as tensors under the data root, keyed by the folder's
contents (relative paths, sizes, modification times) and the `size` option; the cache is
written with `torch.save` and read with `weights_only=True`, so it can never run code.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from tune_hw.data.builtin import default_data_root
from tune_hw.data.splits import Splits, from_arrays
from tune_hw.errors import UserError

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
SPLIT_DIRS = ("train", "val", "test")
GREYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")  # one channel; every other mode is RGB
CACHE_VERSION = 1  # bump when the decoding changes, so old caches are not reused

Files = dict[str, list[tuple[Path, str]]]  # split -> (image, class name) in a stable order


def load_imagefolder(path: str, size: int | list[int] | None = None, val_fraction: float = 0.2,
                     test_fraction: float = 0.2, seed: int = 0) -> Splits:
    """Images as N x C x H x W in [0, 1] (C = 1 greyscale or 3 RGB), classes by folder name.

    `size` resizes every image to size x size (or [H, W]); without it all must match.
    """
    root = Path(path).expanduser()
    source = f"image folder {root}"
    if not path or not root.is_dir():
        raise UserError(f"image folder {path!r} does not exist: give a directory as "
                        "imagefolder:DIR (DIR/<class>/<image> or DIR/train/<class>/<image>)")
    hw = _size(size, source)
    try:
        files = {split: class_files(folder) for split, folder in split_dirs(root).items()}
        parts = cached_arrays(root, files, hw, source)
    except PermissionError as exc:
        raise UserError(f"{source} cannot be read ({exc.strerror}: {exc.filename}): give the "
                        "user running the search read access") from None
    return from_arrays(source, parts, val_fraction, test_fraction, seed)


def split_dirs(root: Path) -> dict[str, Path]:
    """DIR/train (with DIR/val, DIR/test where present) when there is one, else DIR itself."""
    if not (root / "train").is_dir():
        return {"train": root}
    return {split: root / split for split in SPLIT_DIRS if (root / split).is_dir()}


def class_files(folder: Path) -> list[tuple[Path, str]]:
    """Every image under each class folder (recursively, sorted), as torchvision finds them."""
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"image folder {folder} has no class folders: put the images in "
                        f"{folder}/<class>/<image>")
    found = []
    for class_dir in classes:
        images = sorted(p for p in class_dir.rglob("*")
                        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise UserError(f"class folder {class_dir} holds no images "
                            f"({', '.join(IMAGE_SUFFIXES)}): add some or remove the folder")
        found += [(image, class_dir.name) for image in images]
    return found


def _size(size: int | list[int] | None, source: str) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = [size, size] if isinstance(size, int) else list(size)
    if len(hw) != 2 or not all(isinstance(v, int) and v >= 1 for v in hw):
        raise UserError(f"{source}: dataset.size is {size!r}: give one positive integer or "
                        "[height, width]")
    return hw[0], hw[1]


def cache_path(root: Path, files: Files, hw: tuple[int, int] | None) -> Path:
    """A file under the data root whose name changes whenever the folder's contents do."""
    digest = hashlib.sha256(f"v{CACHE_VERSION} {root.resolve()} size={hw}\n".encode())
    for split, images in files.items():
        for image, _ in images:
            stat = image.stat()
            digest.update(f"{split}/{image.relative_to(root)}:{stat.st_size}:"
                          f"{stat.st_mtime_ns}\n".encode())
    return default_data_root() / "imagefolder" / f"{root.name}-{digest.hexdigest()[:20]}.pt"


def cached_arrays(root: Path, files: Files, hw: tuple[int, int] | None, source: str
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The decoded splits from the cache, decoding (once, under a lock) when it is missing."""
    path = cache_path(root, files, hw)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_suffix(".lock"))):
        parts = _read_cache(path)
        if parts is None:
            parts = decode(files, hw, source)
            _write_cache(path, parts)
    return parts


def _read_cache(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """Tensors only (weights_only): a damaged or foreign file is ignored and rebuilt."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        classes = np.array(stored["classes"], dtype=str)
        return {split: (part["x"].numpy(), classes[part["y"].numpy()])
                for split, part in stored["splits"].items()}
    except Exception:  # absent, truncated, or not ours (weights_only refuses any pickle code)
        return None


def _write_cache(path: Path, parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    classes = sorted({str(name) for _, names in parts.values() for name in names})
    index = {name: i for i, name in enumerate(classes)}
    stored = {"classes": classes, "splits": {
        split: {"x": torch.from_numpy(x),
                "y": torch.tensor([index[str(n)] for n in names], dtype=torch.long)}
        for split, (x, names) in parts.items()}}
    partial = path.with_suffix(f".{os.getpid()}.partial")
    torch.save(stored, partial)
    os.replace(partial, path)  # readers never see half a file


def decode(files: Files, hw: tuple[int, int] | None, source: str
           ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every split's images as uint8 N x C x H x W and their class names; one shape for all."""
    pixels = {split: [_decode_one(image, hw) for image, _ in images]
              for split, images in files.items()}
    decoded = [(image, array) for split, images in files.items()
               for (image, _), array in zip(images, pixels[split], strict=True)]
    first_image, first = decoded[0][0].name, decoded[0][1].shape
    for image, array in decoded:
        if array.shape[0] != first[0]:
            raise UserError(f"{source}: images differ in channels ({first_image} has "
                            f"{first[0]}, {image.name} has {array.shape[0]}): save them all as "
                            "greyscale or all as RGB")
        if array.shape != first:
            raise UserError(f"{source}: images differ in size ({first_image} is "
                            f"{first[1]}x{first[2]}, {image.name} is {array.shape[1]}x"
                            f"{array.shape[2]}): set dataset.size (e.g. size: 32) to resize them")
    return {split: (np.stack(pixels[split]), np.array([name for _, name in images], dtype=str))
            for split, images in files.items()}


def _decode_one(image: Path, hw: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 C x H x W: greyscale modes keep one channel, the rest become RGB."""
    from PIL import Image

    try:
        with Image.open(image) as opened:
            picture = opened.convert("L" if opened.mode in GREYSCALE_MODES else "RGB")
            if hw is not None:
                picture = picture.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
            array = np.asarray(picture, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for damaged files
        if isinstance(exc, PermissionError):
            raise
        reason = (str(exc).splitlines() or [""])[0]
        raise UserError(f"image {image} cannot be decoded ({type(exc).__name__}: {reason}): "
                        "replace or remove it") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
