"""Bad data files, through the real search CLI: one clear line, exit 2, before Ray starts.

Each kind of problem once; tests/test_data_files.py covers the variants of each loader.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

STUDY = """\
description: bad-data base
dataset: {dataset}
model: {{name: mlp, width: 8, depth: 1}}
train: {{epochs: 1, lr: 0.01, batch_size: 4}}
space:
  train.lr: {{loguniform: [1.0e-4, 1.0]}}
search: {{algorithm: random, num_samples: 1}}
scheduler: {{name: fifo}}
"""


def npz(**arrays):
    def make(folder: Path) -> str:
        np.savez(folder / "data.npz", **arrays)
        return f"npz:{folder / 'data.npz'}"
    return make


def images(*groups: tuple[str, str, tuple[int, int]], junk: bool = False):
    """Class folders of two PNGs each: (class, PIL mode, (width, height))."""
    def make(folder: Path) -> str:
        root = folder / "pics"
        root.mkdir()
        for name, mode, size in groups:
            (root / name).mkdir()
            for i in range(2):
                Image.new(mode, size).save(root / name / f"{i}.png")
        if junk:
            (root / groups[0][0] / "0.png").write_bytes(b"not a png")
        return f"imagefolder:{root}"
    return make


def text_file(prefix: str, suffix: str):
    def make(folder: Path) -> str:
        (folder / f"data.{suffix}").write_text("just some text\n")
        return f"{prefix}:{folder / f'data.{suffix}'}"
    return make


X, Y = np.zeros((12, 4)), np.arange(12) % 2
# name: (makes the data and returns dataset.name, extra dataset options, what the line says)
CASES = {
    "missing_array": (npz(x=X), "", "has no array 'y'"),
    "lengths_differ": (npz(x=X, y=Y[:10]), "", "x has 12 rows but y has 10"),
    "non_finite_x": (npz(x=np.where(np.eye(12, 4) > 0, np.inf, 0.0), y=Y), "",
                     "x holds non-finite values (NaN or inf) in 4 rows"),
    "single_class": (npz(x=X, y=np.ones(12)), "", "y holds a single class"),
    "layout_does_not_fit": (npz(x=np.zeros((12, 3, 4, 4)), y=Y), ", layout: signal",
                            "layout signal needs x of shape N x L or N x C x L"),
    "npz_does_not_exist": (lambda folder: f"npz:{folder / 'absent.npz'}", "",
                           "absent.npz' does not exist"),
    "npz_not_an_archive": (text_file("npz", "npz"), "", "is not an .npz archive"),
    "image_folder_empty": (images(), "", "has no class folders"),
    "image_unreadable": (images(("a", "L", (4, 4)), ("b", "L", (4, 4)), junk=True), "",
                         "cannot be decoded"),
    "images_differ_in_channels": (images(("a", "L", (4, 4)), ("b", "RGB", (4, 4))), "",
                                  "images differ in channels"),
}


def run_case(tmp_path: Path, name: str):
    make, options, _ = CASES[name]
    folder = tmp_path / name
    folder.mkdir()
    dataset_name = make(folder)
    study = folder / "study.yaml"
    study.write_text(STUDY.format(dataset=f"{{name: '{dataset_name}'{options}}}"))
    env = {"TUNE_HW_DATA": str(folder / "cache")}
    return run_cli("tune_hw.search", str(study), "--storage-path", str(folder / "runs"),
                   timeout=120, env=env), folder


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case at once: each is a fresh interpreter importing torch."""
    tmp_path = tmp_path_factory.mktemp("bad_data")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run_case, tmp_path, name) for name in CASES}
    return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_data_gives_one_clear_line_before_ray_starts(outcomes, name):
    proc, folder = outcomes[name]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and CASES[name][2] in lines[0], proc.stderr[-2000:]
    assert str(folder) in lines[0]  # the line names the file or folder to fix
    assert not (folder / "runs").exists()  # no run was started
    assert "Ray" not in proc.stderr  # nor Ray itself
