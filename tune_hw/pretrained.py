"""Pretrained weights for a model, by their source: `imagenet`, a state_dict file, or the best
saved state of an earlier tune_hw run.

    weights: imagenet                       # torchvision's ResNet-18 weights (torch cache)
    weights: /path/to/state_dict.pt         # torch.save(model.state_dict(), path)
    weights: run:pretrain/full              # <storage>/pretrain/full
    weights: run:/shared/runs/pretrain/r1   # an absolute run directory
    weights: run:s3://bucket/runs/pretrain/r1   # a run on object storage

Every file loads with `torch.load(..., weights_only=True)`. The storage root of `run:`
references is $TUNE_HW_STORAGE (a directory or a URI), else ./runs of the directory the
search started in.

The best trial is the run's best neural trial by the run's own ranking (its study's
search.metric and mode: ranking.Ranking, as the search and the report rank); its weights are
the state that trial saved at its best epoch by the same ranking (best.pt). A missing run
named `full` or `quick` of a study in search_spaces/ is created first by running that study
(`quick` with its quick profile), so `python -m tune_hw.search transfer --quick` works on a
clean clone; any other missing run is an error.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from tune_hw import layout, results
from tune_hw.errors import UserError
from tune_hw.layout import (
    BEST_STATE_FILE,
    DEFAULT_STORAGE,
    STORAGE_ENV,
    STUDY_DIR,
    TRIALS_FILE,
    best_state_path,
)
from tune_hw.ranking import Ranking
from tune_hw.results import CONFIG_PREFIX, read_study
from tune_hw.storage import ObjectPath, is_uri, location
from tune_hw.trees import TREE_MODELS

AUTO_RUNS = {"full": [], "quick": ["--quick"]}  # missing runs created on demand, their flags


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
        path = best_run_checkpoint(weights[4:])
    else:
        path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist: give a state_dict saved with "
                        "torch.save(model.state_dict(), path)")
    try:
        state = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu",
                           weights_only=True)
    except Exception as exc:
        raise UserError(f"weights file {path} cannot be loaded safely ({type(exc).__name__}); "
                        "only plain state_dicts of tensors are accepted") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"weights file {path} holds no model tensors: give a state_dict or a "
                        "tune_hw checkpoint of a neural trial")
    return state



def storage_root() -> Path | ObjectPath:
    """Where relative run references live: $TUNE_HW_STORAGE, else ./runs of the launch dir.

    Inside a trial Tune changes the working directory; TUNE_ORIG_WORKING_DIR is the original.
    """
    if os.environ.get(STORAGE_ENV):
        return location(os.environ[STORAGE_ENV])
    return Path(os.environ.get("TUNE_ORIG_WORKING_DIR", os.getcwd())) / DEFAULT_STORAGE


def run_directory(ref: str) -> Path | ObjectPath:
    """`study/run_name` (relative to the storage root, and staying under it), an absolute
    run directory or a run's URI."""
    if is_uri(ref):
        return location(ref)
    path = Path(ref).expanduser()
    if path.is_absolute():
        return path
    parts = ref.split("/")
    try:
        if len(parts) != 2:
            raise UserError("it has no study/run_name parts")
        for part in parts:
            layout.check_name(part, "name")
    except UserError:
        raise UserError(f"weights run:{ref} must be run:<study>/<run_name> of two plain names "
                        "(e.g. run:pretrain/full; '..' would leave the storage path) or "
                        "run:/absolute/path/to/a/run") from None
    return storage_root() / parts[0] / parts[1]


def best_run_checkpoint(ref: str) -> Path | ObjectPath:
    """The state of the best epoch of the best trial of run `ref` (its best.pt)."""
    run_dir = run_directory(ref)
    if not (run_dir / TRIALS_FILE).is_file():
        ensure_run(ref, run_dir)
    trial_id, group_id = best_trial(run_dir, ref)
    path = best_state_path(run_dir, trial_id, group_id)
    if not path.is_file():
        raise UserError(f"weights run:{ref}: trial {trial_id} saved no {BEST_STATE_FILE} in "
                        f"{path.parent}; the run is incomplete or older than this tune_hw: "
                        "rerun the source study")
    return path


def ensure_run(ref: str, run_dir: Path | ObjectPath) -> None:
    """Create a missing relative run by running its study once, or say how to get one."""
    study, run_name = (Path(ref).parts + ("", ""))[:2]
    known = not is_uri(ref) and not Path(ref).is_absolute() and \
        (STUDY_DIR / f"{study}.yaml").is_file()
    if not known or run_name not in AUTO_RUNS:
        hint = (f"create it with `python -m tune_hw.search {study} --name {run_name}`" if known
                else "run the source study first or fix the reference")
        raise UserError(f"weights run:{ref}: {run_dir} is not a tune_hw run (no {TRIALS_FILE}); "
                        f"{hint}")
    if _inside_trial():  # the driver creates runs; a trial that cannot see one must not
        raise UserError(f"weights run:{ref}: {run_dir} is not visible from this worker; use "
                        "shared storage and set TUNE_HW_STORAGE, or an absolute run: path")
    command = [sys.executable, "-m", "tune_hw.search", study, "--name", run_name,
               "--storage-path", str(run_dir.parent.parent), *AUTO_RUNS[run_name]]
    shown = " ".join(["python", *command[1:]])
    print(f"weights run:{ref} does not exist yet: running `{shown}`", flush=True)
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    if subprocess.run(command, env=env).returncode != 0:
        raise UserError(f"weights run:{ref}: creating it with `{shown}` failed (see its "
                        "output above); fix that study and retry")


def _inside_trial() -> bool:
    return "TUNE_ORIG_WORKING_DIR" in os.environ


def best_trial(run_dir: Path | ObjectPath, ref: str) -> tuple[str, str]:
    """The ids of the run's best neural trial and of its group, by its study's ranking (a
    trial without a healthy epoch is not ranked; a tree baseline has no weights to give)."""
    usable = results.read_table(run_dir / TRIALS_FILE,
                                ["trial_id", "group_id", "status", "best_val_acc"])
    model_name = f"{CONFIG_PREFIX}model.name"
    if model_name in usable:  # a tree baseline has no weights to transfer
        usable = usable[~usable[model_name].isin(TREE_MODELS)]
    ranked = Ranking.of(read_study(run_dir)).ranked(usable.reset_index(drop=True))
    if ranked.empty:
        raise UserError(f"weights run:{ref}: no neural trial of {run_dir} finished an epoch "
                        "without diverging; rerun the source study")
    return str(ranked.iloc[0]["trial_id"]), str(ranked.iloc[0]["group_id"])
