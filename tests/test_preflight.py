"""The preflight (tune_hw.preflight): every dataset and model variant checked once in the driver,
and nothing kept."""

import gc
import weakref

from tune_hw import data, preflight, studies


def test_preflight_releases_every_dataset_it_checked(monkeypatch):
    loaded, real_load = [], data.load

    def recording_load(name, **options):
        splits = real_load(name, **options)
        loaded.append(weakref.ref(splits.train.x))
        return splits

    monkeypatch.setattr(data, "load", recording_load)
    study = studies.load_study("lr_batch", quick=True, overrides={
        "space.dataset.n_train": {"choice": [1500, 2000]}})
    sizes = preflight.preflight(study)
    gc.collect()
    assert len(loaded) == 2 and all(ref() is None for ref in loaded)  # nothing kept
    assert sizes is None  # the variants' sizes differ: each trial records its own
