"""Tune's search algorithms, able to follow a moved run and to grow a finished one on restore.

Tune (2.60) restores a search algorithm from its saved state, which holds the experiment spec
as it was first made: the storage place of the run's first directory and the first total of
trials. Restored trials are re-rooted by Tune itself, but trials created after the restore would
write into the old place (or fail there), and a finished run never gets new trials. These
subclasses repair both in `set_state`, as Tune's controller does for the trials it restores:
the spec's storage is re-pointed at the run's current place and the total is raised to the
study's (a fused random/grid run, one grid over its groups, gets a grid over the groups it
lacks instead: fused_search.space_growth). The driver sets all of it with `follow()` before
`fit()` (the controller runs in the driver); the restored instance is one of these classes
because tuner.pkl names them by module path, so they must keep their names and this module
its path.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any, ClassVar

import pyarrow.fs as pafs
from ray.tune.search import BasicVariantGenerator, SearchGenerator
from ray.tune.search.basic_variant import _TrialIterator
from ray.tune.search.variant_generator import _count_variants

from tune_hw import storage

# the param spaces a restored random/grid generator holds -> one more to draw (None: none)
AddedSpace = Callable[[list[dict]], dict | None]


class Place:
    """Where the restored run is now and how many samples it should reach (None: as saved)."""

    storage_path: ClassVar[str | None] = None  # the run's parent: a directory or a URI
    run_name: ClassVar[str | None] = None
    num_samples: ClassVar[int | None] = None
    added_space: ClassVar[AddedSpace | None] = None


def follow(storage_path: str, run_name: str, num_samples: int,
           added_space: AddedSpace | None = None) -> None:
    """Make the next restore re-point new trials at `storage_path/run_name` and raise the
    run's num_samples to `num_samples` (never lowered), or add `added_space`'s space to a
    restored random/grid generator."""
    Place.storage_path, Place.run_name, Place.num_samples = storage_path, run_name, num_samples
    Place.added_space = added_space


def _moved(spec_storage: Any) -> Any:
    """A copy of the restored StorageContext pointing at the run's current place."""
    if Place.storage_path is None:
        return spec_storage
    where = storage.location(Place.storage_path)
    if isinstance(where, storage.ObjectPath):
        fs, fs_path = pafs.FileSystem.from_uri(str(where))  # credentials stay in the env
    else:
        fs, fs_path = pafs.LocalFileSystem(), str(where)
    moved = copy.copy(spec_storage)
    moved.storage_filesystem, moved.storage_fs_path = fs, fs_path
    moved.experiment_dir_name = Place.run_name
    return moved


class GrowingSearch(SearchGenerator):
    """Tune's wrapper of a Searcher (Optuna), restorable at a new place and to more trials.
    The searcher itself (Optuna's study and sampler) is restored by Tune from its own state."""

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        if self._experiment is None:
            return
        self._experiment.spec["storage"] = _moved(self._experiment.spec["storage"])
        self._experiment.storage = self._experiment.spec["storage"]
        if Place.num_samples is not None and Place.num_samples > self._total_samples:
            self._total_samples = Place.num_samples
            self._experiment.spec["num_samples"] = Place.num_samples
            self._finished = False
        grow = getattr(_base_searcher(self.searcher), "grow", None)
        if Place.num_samples is not None and grow is not None:
            grow(Place.num_samples)  # a searcher that counts its own samples (GroupSearcher)


def _base_searcher(searcher: Any) -> Any:
    """The searcher inside Tune's wrappers (ConcurrencyLimiter, Repeater)."""
    while hasattr(searcher, "searcher"):
        searcher = searcher.searcher
    return searcher


class GrowingVariants(BasicVariantGenerator):
    """Tune's random/grid generator, restorable at a new place and to more samples: each
    pickled trial iterator holds the spec and the samples left to draw."""

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        for iterator in self._iterators:
            iterator.unresolved_spec["storage"] = _moved(iterator.unresolved_spec["storage"])
            # an unfused run draws more samples of its space; a fused one (num_samples 1, a
            # grid over its groups) gets a space of new groups instead (added_space)
            if Place.num_samples is not None and Place.num_samples > iterator.num_samples:
                extra = Place.num_samples - iterator.num_samples
                per_sample = self._total_samples // max(iterator.num_samples, 1)  # grid size
                iterator.num_samples = Place.num_samples
                iterator.num_samples_left += extra
                self._total_samples += extra * per_sample
                self._finished = False
        space = Place.added_space and Place.added_space(
            [iterator.unresolved_spec["config"] for iterator in self._iterators])
        if space:
            self._add_space(space)

    def _add_space(self, space: dict) -> None:
        """One pass of Tune's generator over `space`, its trials numbered after the run's."""
        spec = {**self._iterators[-1].unresolved_spec, "config": space, "num_samples": 1}
        iterator = _TrialIterator(uuid_prefix=self._uuid_prefix, num_samples=1,
                                  unresolved_spec=spec, start=self._total_samples,
                                  random_state=self._random_state)
        self._iterators.append(iterator)
        self._trial_generator = itertools.chain(self._trial_generator, iterator)
        self._total_samples += _count_variants(spec, [])
        self._finished = False
