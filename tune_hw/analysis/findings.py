"""Claims → verdicts: test each claim of a study (tune_hw.claims) on a run's tables.

`evaluate(claims, trials, epochs, grads, study)` returns one `Finding` per claim: the effect
(its meaning and sign per claim form are in tune_hw.claims), a 95% interval, the number of
trials it rests on, a verdict and one plain sentence.

The interval is a percentile bootstrap (N_BOOTSTRAP resamples, seeded by `seed` and the
claim's name, so a run's verdicts are reproducible). Each resample
1. re-evaluates every trial: each accuracy on n examples is redrawn as Binomial(n, acc) / n
   (n from the trial's split sizes, `train_eval_size`/`val_size`/`test_size`, or study
   `data_sizes`),
   and metrics derived from accuracies are derived from the redrawn ones (trial_metrics);
2. draws each group's trials again with replacement, independently per group: where the run
   has repeats, the repeats within each config (configs fixed, so the interval is about these
   configs over seeds), otherwise the group's trials (they stand in for seeds);
3. computes the effect from the resampled group means.
The two noises are combined as the issue asks, and that errs wide: the spread between a
group's trials already holds their own evaluation noise, so drawing trials again and redrawing
their examples counts it about twice (the variance of a group mean of n trials is s²/n +
(2 − 1/n)·v̄/n, s² their spread, v̄ the mean Binomial variance acc(1 − acc)/n_examples). At the
2–6 trials per group of these studies that offsets the percentile bootstrap's known narrowness
at small n; with one trial per config (no repeats, configs fixed) the redraw is the only noise.
Label claims count trials, and a bootstrap of a share collapses to a point when every trial
has the label; their interval is the exact (Clopper–Pearson) binomial interval instead.

Verdict: `supported` when the interval lies entirely inside the claimed side, `contradicted`
when it lies entirely outside, `inconclusive` otherwise, and whenever a group has fewer than
MIN_GROUP_TRIALS trials with the metric. Trials without the metric (a trial that diverged
before any healthy epoch has no best accuracy) are left out of metric claims; label claims
count them.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from tune_hw.analysis import trial_metrics as TM
from tune_hw.analysis.effects import gap_table
from tune_hw.analysis.params import with_variants
from tune_hw.analysis.selection import winner_position
from tune_hw.analysis.trials import N_BOOTSTRAP, col, native, with_schema
from tune_hw.claim_groups import Group, Selector, same_value
from tune_hw.claims import KINDS, Claim, Compare, Label, Selection, Trend

MIN_GROUP_TRIALS = 2  # a group of one trial says nothing about seed-to-seed variation
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"


@dataclass(frozen=True)
class GroupValue:
    """One group of a claim: its description, how many trials it has, their mean."""

    group: str
    n: int
    value: float


@dataclass(frozen=True)
class Finding:
    """A claim's verdict with its effect, 95% interval and the trials it rests on."""

    name: str
    kind: str  # compare | trend | label | selection
    verdict: str  # supported | contradicted | inconclusive
    effect: float  # NaN when it could not be computed
    ci_low: float
    ci_high: float
    n: int
    sentence: str
    claimed: str  # the side the claim puts the effect on, e.g. "above 0"
    basis: str  # what the interval resamples
    groups: tuple[GroupValue, ...] = ()

    def summary(self) -> dict[str, Any]:
        """The summary.json entry: name, verdict, effect, ci_low, ci_high, n (None for NaN)."""
        return {k: _json_number(getattr(self, k))
                for k in ("name", "verdict", "effect", "ci_low", "ci_high", "n")}

    def as_dict(self) -> dict[str, Any]:
        """Every field, JSON-able (NaN as None), groups as a list of mappings."""
        out = {k: _json_number(v) for k, v in asdict(self).items() if k != "groups"}
        out["groups"] = [{"group": g.group, "n": g.n, "value": _json_number(g.value)}
                         for g in self.groups]
        return out


def evaluate(claims: tuple[Claim, ...] | list[Claim], trials: pd.DataFrame,
             epochs: pd.DataFrame, grads: pd.DataFrame, study: dict[str, Any],
             n_boot: int = N_BOOTSTRAP, seed: int = 0) -> list[Finding]:
    """One Finding per claim, in the claims' order."""
    t = with_variants(with_schema(trials), study)
    sizes = TM.split_sizes(t, study)
    out = []
    for claim in claims:
        rng = np.random.default_rng([seed, zlib.crc32(claim.name.encode())])
        inside = group_mask(claim.where, t)
        if isinstance(claim, Label):
            out.append(_label(claim, t, inside))
        elif isinstance(claim, Selection):
            out.append(_selection(claim, t, inside, sizes, rng, n_boot))
        else:
            values = TM.trial_values(claim.metric, t, epochs, grads, sizes)
            out.append(_metric_claim(claim, t, inside, values, rng, n_boot))
    return out


def untestable(item: Any, index: int, reason: str) -> Finding:
    """The finding of a claim this run cannot test (its group or key is outside the run's
    space): inconclusive, with the reason as its sentence."""
    item = item if isinstance(item, dict) else {}
    kind = next((k for k in KINDS if k in item), "claim")
    return Finding(name=str(item.get("name") or f"claims[{index}]"), kind=kind,
                   verdict=INCONCLUSIVE, effect=math.nan, ci_low=math.nan, ci_high=math.nan,
                   n=0, sentence=f"This run cannot test it: {reason}.", claimed="",
                   basis="")


def verdict(low: float, high: float, ci_low: float, ci_high: float) -> str:
    """supported: the interval inside (low, high); contradicted: entirely outside it."""
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return INCONCLUSIVE
    if low < ci_low and ci_high < high:
        return SUPPORTED
    if ci_high <= low or ci_low >= high:
        return CONTRADICTED
    return INCONCLUSIVE


# ------------------------------------------------------------------------------- groups

def group_mask(group: Group, trials: pd.DataFrame) -> np.ndarray:
    """Which trials match every selector of `group` (a missing column matches nothing)."""
    mask = np.ones(len(trials), bool)
    for s in group.selectors:
        column = col(s.key)
        if column not in trials:
            return np.zeros(len(trials), bool)
        mask &= trials[column].map(lambda cell, s=s: _selected(cell, s)).to_numpy(bool)
    return mask


def _selected(cell: Any, s: Selector) -> bool:
    cell = native(cell)
    if s.values:
        return any(same_value(cell, v) for v in s.values)
    return isinstance(cell, (int, float)) and not isinstance(cell, bool) and \
        s.low <= cell <= s.high


def claim_groups(claim: Compare | Trend) -> list[Group]:
    """The groups whose means the effect is computed from, in the statistic's order."""
    if isinstance(claim, Trend):
        return [Group((Selector(claim.across, (v,)),)) for v in claim.levels]
    if claim.form == "contrast":
        (higher, lower), (more, than) = claim.groups, claim.contrast
        return [higher & more, lower & more, higher & than, lower & than]
    return list(claim.groups)


def statistic(claim: Compare | Trend, means: np.ndarray) -> np.ndarray:
    """The effect from group means (groups × resamples) → (resamples,)."""
    if isinstance(claim, Trend):
        steps = np.diff(means, axis=0)
        return steps.min(axis=0) if claim.direction == "rising" else steps.max(axis=0)
    if claim.form == "pairs":
        return (means[0] - means[1:]).min(axis=0)
    if claim.form == "order":
        return (-np.diff(means, axis=0)).min(axis=0)
    if claim.form == "contrast":
        return (means[0] - means[1]) - (means[2] - means[3])
    if claim.form == "same":
        return means[0] - means[1]
    return means[0]  # threshold


# ------------------------------------------------------------------------------- claims

def _metric_claim(claim: Compare | Trend, t: pd.DataFrame, inside: np.ndarray,
                  values: TM.TrialValues, rng: np.random.Generator, n_boot: int) -> Finding:
    usable = inside & np.isfinite(values.point)
    groups = claim_groups(claim)
    positions = [np.flatnonzero(usable & group_mask(g, t)) for g in groups]
    table = tuple(GroupValue(g.describe(), len(p), float(values.point[p].mean())
                             if len(p) else math.nan) for g, p in zip(groups, positions,
                                                                      strict=True))
    n = len(set(np.concatenate(positions).tolist()))
    short = [g for g in table if g.n < MIN_GROUP_TRIALS]
    if short:
        return _undecided(claim, n, table, _too_few(short, claim.metric.name))
    used = np.concatenate(positions)
    if values.censored is not None and values.censored[used].all():
        return _undecided(claim, n, table, f"no trial reaches the accuracy of "
                          f"{claim.metric.describe()}, so every value is the one-past-the-last "
                          "stand-in: train longer or lower acc")
    draws = values.draw(rng, n_boot)
    configs = TM.config_ids(t)
    boot, by_config = [], False
    for p in positions:
        idx, stratified = TM.resample_positions(p, configs, rng, n_boot)
        boot.append(np.take_along_axis(draws, idx, axis=1).mean(axis=1))
        by_config |= stratified
    effect = float(statistic(claim, np.array([[g.value] for g in table]))[0])
    low, high = np.percentile(statistic(claim, np.array(boot)), [2.5, 97.5])
    basis = _basis(by_config, values.noisy)
    return _finding(claim, effect, float(low), float(high), n, basis, table)


def _label(claim: Label, t: pd.DataFrame, inside: np.ndarray) -> Finding:
    gaps = gap_table(t).set_index("trial_id").label
    gap_label = t.trial_id.map(gaps)
    has_label = (gap_label.isin(claim.labels) | t.status.isin(claim.labels)).to_numpy(bool)
    counted = inside & group_mask(claim.group, t) & \
        (gap_label.notna() | t.status.isin(claim.labels)).to_numpy(bool)
    n, k = int(counted.sum()), int((counted & has_label).sum())
    table = (GroupValue(claim.group.describe(), n, k / n if n else math.nan),)
    if n < MIN_GROUP_TRIALS:
        return _undecided(claim, n, table, _too_few(table, "a gap label or status"))
    low, high = clopper_pearson(k, n)
    need = trials_needed(claim.low)
    note = f"; at least {need} trials, all labelled, are needed to show it" \
        if verdict(claim.low, claim.high, low, high) == INCONCLUSIVE and n < need else ""
    return _finding(claim, k / n, low, high, n, "exact binomial interval", table, note)


def _selection(claim: Selection, t: pd.DataFrame, inside: np.ndarray,
               sizes: dict[str, np.ndarray], rng: np.random.Generator, n_boot: int
               ) -> Finding:
    """The validation winner (best mean val over its repeats) against every other config on
    test; the winner stays the one this run picked, only the test scores are resampled."""
    ok = inside & np.isfinite(t.best_val_acc.to_numpy(float)) & \
        np.isfinite(t.test_acc_at_best.to_numpy(float))
    positions = np.flatnonzero(ok)
    configs = TM.config_ids(t)
    order = list(dict.fromkeys(configs[positions]))
    members = [positions[configs[positions] == c] for c in order]
    if len(members) < 2:
        return _undecided(claim, len(positions), (), f"{len(members)} config has a validation "
                          "and a test score: selection needs 2 or more")
    means = pd.DataFrame({
        "best_val_acc": [t.best_val_acc.to_numpy(float)[m].mean() for m in members],
        "val_loss_at_best": [t.val_loss_at_best.to_numpy(float)[m].mean() for m in members]})
    w = winner_position(means)
    test = t.test_acc_at_best.to_numpy(float)
    draws = TM.redraw(test, sizes["test"], rng, n_boot)
    point, boot, by_config = [], [], False
    for m in members:
        idx, stratified = TM.resample_positions(m, configs, rng, n_boot)
        point.append(test[m].mean())
        boot.append(np.take_along_axis(draws, idx, axis=1).mean(axis=1))
        by_config |= stratified
    point, boot = np.array(point), np.array(boot)
    others = np.delete(np.arange(len(members)), w)
    effect = float(point[w] - point[others].max())
    low, high = np.percentile(boot[w] - boot[others].max(axis=0), [2.5, 97.5])
    table = (GroupValue(f"validation winner {order[w]}", len(members[w]), float(point[w])),
             GroupValue("best other config on test", len(members[others[np.argmax(
                 point[others])]]), float(point[others].max())))
    noisy = bool(np.isfinite(sizes["test"]).any())
    basis = _basis(by_config, noisy) if by_config else \
        "bootstrap over evaluation examples (one seed per config)" if noisy else "no resampling"
    return _finding(claim, effect, float(low), float(high), len(positions), basis, table)


def trials_needed(share: float, level: float = 0.95) -> int:
    """The fewest trials whose exact interval, all of them labelled, lies above `share`:
    with k = n the lower bound is ((1 - level) / 2) ** (1 / n)."""
    if share <= 0:
        return MIN_GROUP_TRIALS
    return max(MIN_GROUP_TRIALS, math.floor(math.log((1 - level) / 2) / math.log(share)) + 1)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact binomial interval of a share k / n."""
    from scipy.stats import beta

    alpha = 1 - level
    low = float(beta.ppf(alpha / 2, k, n - k + 1)) if k > 0 else 0.0
    high = float(beta.ppf(1 - alpha / 2, k + 1, n - k)) if k < n else 1.0
    return low, high


# ---------------------------------------------------------------------------- sentences

def _finding(claim: Claim, effect: float, low: float, high: float, n: int, basis: str,
             table: tuple[GroupValue, ...], note: str = "") -> Finding:
    word = verdict(claim.low, claim.high, low, high)
    sentence = (f"{word.capitalize()}: {effect_text(claim)} is {_num(effect)} (95% CI "
                f"{_num(low)} to {_num(high)} from {n} trials, {basis}); the claim expects "
                f"{claimed_text(claim)}{note}.")
    return Finding(claim.name, _kind(claim), word, effect, low, high, n, sentence,
                   claimed_text(claim), basis, table)


def _undecided(claim: Claim, n: int, table: tuple[GroupValue, ...], reason: str) -> Finding:
    return Finding(claim.name, _kind(claim), INCONCLUSIVE, math.nan, math.nan, math.nan, n,
                   f"Inconclusive: {reason}.", claimed_text(claim), "no interval", table)


def _too_few(short: list[GroupValue] | tuple[GroupValue, ...], what: str) -> str:
    listed = "; ".join(f"{g.group} has {g.n}" for g in short)
    return (f"too few trials with {what} ({listed}; each group needs {MIN_GROUP_TRIALS}): "
            "raise search.repeats or widen the group")


def effect_text(claim: Claim) -> str:
    """What the effect of a claim measures, in words."""
    if isinstance(claim, Label):
        return f"the share of {claim.group.describe()} labelled {' or '.join(claim.labels)}"
    if isinstance(claim, Selection):
        return "the validation winner's test accuracy minus the best other config's"
    metric = claim.metric.describe()
    if isinstance(claim, Trend):
        step = "rise" if claim.direction == "rising" else "fall"
        levels = ", ".join(str(v) for v in claim.levels)
        return f"the smallest {step} of {metric} between neighbouring {claim.across} ({levels})"
    g = [x.describe() for x in claim.groups]
    return {"pairs": f"{metric} of {g[0]} minus {' / '.join(g[1:])}"
                     + (" (smallest margin)" if len(g) > 2 else ""),
            "order": f"the smallest step of {metric} down {' > '.join(g)}",
            "same": f"{metric} of {g[0]} minus {g[-1]}",
            "threshold": f"the mean {metric} of {g[0]}",
            "contrast": f"{metric} of {g[0]} minus {g[-1]} in "
                        f"{claim.contrast[0].describe()} less the same in "
                        f"{claim.contrast[1].describe()}" if claim.contrast else ""
            }[claim.form]


def claimed_text(claim: Claim) -> str:
    """The claimed side of the effect as words: 'above 0', 'below -2', 'between -m and m'."""
    if math.isinf(claim.high):
        return f"above {_num(claim.low)}"
    if math.isinf(claim.low):
        return f"below {_num(claim.high)}"
    return f"between {_num(claim.low)} and {_num(claim.high)}"


def _basis(by_config: bool, noisy: bool) -> str:
    seeds = "repeats within each config" if by_config else "trials within each group"
    return f"bootstrap over {seeds}" + (" and evaluation examples" if noisy else "")


def _kind(claim: Claim) -> str:
    return {Compare: "compare", Trend: "trend", Label: "label", Selection: "selection"}[
        type(claim)]


def _num(x: float) -> str:
    x = x + 0.0  # no "-0"
    if not math.isfinite(x):
        return "undefined" if math.isnan(x) else str(x)
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def _json_number(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x
