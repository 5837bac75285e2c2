"""The claim language: a study's expected findings, stated as data and validated like any key.

A study file may carry `claims:`, a list of small declarative statements; the report tests
each against the run (`tune_hw.analysis.findings`) and says `supported`, `contradicted` or
`inconclusive`, with an effect, its 95% interval and the number of trials it rests on.

    claim   := name: TEXT   KIND   [where: GROUP]      # where: only these trials count
    KIND    := compare: METRIC [PARAM] FORM
             | trend: METRIC [PARAM]  across: KEY  direction: rising | falling  [values: [V, ...]]
             | label: LABEL | [LABEL, ...]  group: GROUP  [share: S]        # S in [0, 1), 0.5
             | selection: test_winner  [within: M]                         # M >= 0, default 0
    FORM    := higher: GROUP  lower: GROUP | [GROUP, ...]  [by: X]
             | higher: GROUP  lower: GROUP  more_in: GROUP  than_in: GROUP  [by: X]
             | order: [GROUP, GROUP, ...]  [by: X]                          # highest first
             | same: [GROUP, GROUP]  within: M                              # M > 0
             | group: GROUP  above: X | below: X
    GROUP   := all | {KEY: VALUE, ...}                 # every key must match
    VALUE   := V | [V, ...] (any of) | {min: X, max: X} (inclusive; either bound may be left out)
    KEY     := a dotted key (model.name, train.lr, dataset.shuffle, model.kernel_size), or a
               whole-section space key (model) with a variant's label (`cnn kernel_size=3, ...`)
    PARAM   := acc: A  (epochs_to_acc, steps_to_acc; required)
             | epoch: E  (val_below_train_running: an epoch number, default 1;
                          grad_ratio: first | last, default first)

Metrics (one number per trial; trials without it, e.g. diverged before any healthy epoch, are
left out of metric claims but count for label claims):

    gap                      train − val accuracy at the best epoch
    best_val_acc, test_acc_at_best, train_acc_at_best, final_val_acc, final_test_acc
    val_loss_at_best         validation loss at the best epoch
    epochs_to_acc            first epoch whose val accuracy reaches `acc` (never: last epoch + 1)
    steps_to_acc             optimizer steps up to that epoch (never: all steps + one epoch's)
    steps_per_epoch          optimizer steps in one epoch
    step_loss_noise          median step_loss_std over healthy epochs, the first left out
    grad_ratio               log10(first-layer ÷ head gradient norm) at the first/last epoch
                             (-2: a hundredfold smaller; a norm of 0 counts as float32's tiny)
    best_epoch_before_final  final_epoch − best_epoch (> 0: the best epoch came before the last)
    val_below_train_running  train_loss_running − val_loss at `epoch` (> 0: val loss is below)

Labels: the gap labels `diverged`, `underfit`, `overfit`, `good` and the statuses `completed`,
`early_stopped`, `error`; a list means any of them ("diverged or stalled").

Effect and claimed side, per form (a group's value is the mean of its trials' metric; the
95% interval, what it resamples and the verdict rule are described in tune_hw.analysis.findings):
    higher/lower   min over lower groups of higher − lower;  claimed > by (default 0)
    more_in        (higher − lower in more_in) − (higher − lower in than_in);  claimed > by
    order          min over neighbours of earlier − later;  claimed > by
    same           first − second;  claimed within (−M, M)
    group          the group's value;  claimed > X (above) or < X (below)
    trend          smallest step (rising: min, falling: max) of next − previous level, levels in
                   ascending order (or as `values:` lists them);  claimed > 0 or < 0
    label          share of the group's trials with a label;  claimed > share
    selection      test accuracy of the validation winner − the best other config's (config
                   means over repeats);  claimed > −within

Examples:
    - name: MLPs overfit more than CNNs
      compare: gap
      higher: {model.name: mlp}
      lower: {model.name: cnn, model.kernel_size: [3, 5, 7]}
    - name: At lr 1.0 training diverges or stalls
      label: [diverged, underfit]
      group: {train.lr: 1.0}
    - name: Smaller batches take more steps per epoch
      trend: steps_per_epoch
      across: train.batch_size
      direction: falling
    - name: Shuffling the positions erases the CNN's advantage
      compare: best_val_acc
      higher: {model.name: cnn, model.kernel_size: [3, 5, 7]}
      lower: {model.name: mlp}
      more_in: {dataset.shuffle: false}
      than_in: {dataset.shuffle: true}
    - name: The validation winner is within a point of the test winner
      selection: test_winner
      within: 0.01
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tune_hw import claim_groups as G
from tune_hw.claim_groups import INF, ClaimContext, Group, KeyDomain, Selector
from tune_hw.errors import UserError

__all__ = ["Claim", "Compare", "Group", "Label", "Metric", "Selection", "Selector", "Trend",
           "parse_claims"]
KINDS = ("compare", "trend", "label", "selection")
# metric -> its parameter (None: takes none) and the parameter's default (None: required)
METRICS: dict[str, tuple[str | None, Any]] = {
    "gap": (None, None), "best_val_acc": (None, None), "test_acc_at_best": (None, None),
    "train_acc_at_best": (None, None), "final_val_acc": (None, None),
    "final_test_acc": (None, None), "val_loss_at_best": (None, None),
    "epochs_to_acc": ("acc", None), "steps_to_acc": ("acc", None),
    "steps_per_epoch": (None, None), "step_loss_noise": (None, None),
    "grad_ratio": ("epoch", "first"), "best_epoch_before_final": (None, None),
    "val_below_train_running": ("epoch", 1),
}
# the gap labels of tune_hw.analysis.effects and the ended statuses of tune_hw.results
# (tests/test_claims.py checks they agree; this module stays free of pandas)
LABELS = ("diverged", "underfit", "overfit", "good", "completed", "early_stopped", "error")
SELECTIONS = ("test_winner",)
FORM_KEYS = {"higher", "lower", "more_in", "than_in", "by", "order", "same", "within", "group",
             "above", "below"}
KIND_KEYS = {"compare": FORM_KEYS | {"acc", "epoch"},
             "trend": {"across", "direction", "values", "acc", "epoch"},
             "label": {"group", "share"}, "selection": {"within"}}


@dataclass(frozen=True)
class Metric:
    """A per-trial metric and its one parameter (acc or epoch), if it takes one."""

    name: str
    param: Any = None

    def describe(self) -> str:
        key = METRICS[self.name][0]
        return f"{self.name} ({key} {G.text(self.param)})" if key else self.name


@dataclass(frozen=True)
class Claim:
    """Common to every claim: its name, the trials it looks at, the claimed effect range."""

    name: str
    where: Group
    low: float  # the claim holds when low < effect < high
    high: float


@dataclass(frozen=True)
class Compare(Claim):
    """A metric between groups (pairs or order), against a number, or as a contrast."""

    metric: Metric
    form: str  # pairs | order | same | threshold | contrast
    groups: tuple[Group, ...]  # pairs: higher, lowers...; order/same: as listed; threshold: one
    contrast: tuple[Group, Group] | None = None  # (more_in, than_in)


@dataclass(frozen=True)
class Trend(Claim):
    """A metric's group means rise (or fall) at every step across an ordered key."""

    metric: Metric
    across: str
    direction: str  # rising | falling
    levels: tuple[Any, ...]


@dataclass(frozen=True)
class Label(Claim):
    """More than `low` (the share) of a group's trials carry one of `labels`."""

    labels: tuple[str, ...]
    group: Group


@dataclass(frozen=True)
class Selection(Claim):
    """The validation winner is the test winner (within `-low`)."""

    what: str


# ------------------------------------------------------------------------------ parsing

def parse_claims(raw: Any, study: dict[str, Any], where: str) -> tuple[Claim, ...]:
    """Validate a study's `claims:` list against the resolved study; () when it has none."""
    claims, names = [], set()
    for index, claim in enumerate(parse_each(raw, study, where)):
        if isinstance(claim, UserError):
            raise claim
        if claim.name in names:
            raise ClaimContext(where, index, claim.name).fail(
                "name", "the name is used by an earlier claim", "give each claim its own name")
        names.add(claim.name)
        claims.append(claim)
    return tuple(claims)


def parse_each(raw: Any, study: dict[str, Any], where: str) -> list[Claim | UserError]:
    """Each claim parsed on its own against `study`: the Claim, or the error of one that does
    not hold there (a run whose --set narrowed the space can test the others); raises what
    stops every claim (claims not a list)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise UserError(f"{where}: claims must be a list of mappings, got "
                        f"{type(raw).__name__}; write each claim as '- name: ...'")
    domains = G.study_domains(study, where)
    out: list[Claim | UserError] = []
    for index, item in enumerate(raw):
        try:
            out.append(parse_claim(item, study, domains, ClaimContext(where, index)))
        except UserError as exc:
            out.append(exc)
    return out


def parse_claim(item: Any, study: dict[str, Any], domains: dict[str, KeyDomain],
                ctx: ClaimContext) -> Claim:
    """One claim mapping into its frozen dataclass."""
    if not isinstance(item, dict):
        raise ctx.fail("claim", f"a claim must be a mapping, got {item!r}",
                       "write e.g. {name: ..., compare: gap, higher: {...}, lower: {...}}")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ctx.fail("name", f"every claim needs a name (text), got {name!r}",
                       "add name: <the finding in words>")
    ctx.name = name
    kinds = [k for k in KINDS if k in item]
    if len(kinds) != 1:
        raise ctx.fail("kind", f"give exactly one of {list(KINDS)}, got {kinds or 'none'}",
                       "e.g. compare: gap, trend: best_val_acc, label: diverged")
    kind = kinds[0]
    allowed = {"name", "where", kind} | KIND_KEYS[kind]
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise ctx.fail(unknown[0], f"not a key of a {kind} claim",
                       f"use only {sorted(allowed)}")
    where = G.group(item.get("where", "all"), "where", domains, ctx)
    parser = {"compare": _compare, "trend": _trend, "label": _label,
              "selection": _selection}[kind]
    return parser(item, name, where, study, domains, ctx)


def _compare(item: dict, name: str, where: Group, study: dict, domains: dict,
             ctx: ClaimContext) -> Compare:
    metric = _metric(item, "compare", study, ctx)
    forms = [f for f in ("higher", "order", "same", "group") if f in item]
    if len(forms) != 1:
        raise ctx.fail("compare", f"give exactly one of higher/lower, order, same or group, "
                       f"got {forms or 'none'}",
                       "e.g. higher: {model.name: mlp}, lower: {model.name: cnn}")
    _only_with(item, forms[0], ctx)
    form = forms[0]
    if form == "higher":
        return _pairs(item, name, where, metric, domains, ctx)
    if form == "order":
        groups = G.group_list(item["order"], "order", 2, None, domains, ctx)
        return Compare(name, where, G.num(item.get("by", 0), "by", ctx), INF, metric,
                       "order", groups)
    if form == "same":
        groups = G.group_list(item["same"], "same", 2, 2, domains, ctx)
        if "within" not in item:
            raise ctx.fail("within", "a same claim needs a margin",
                           "add within: M, the largest difference that counts as the same")
        m = G.num(item["within"], "within", ctx)
        if m <= 0:
            raise ctx.fail("within", f"must be > 0, got {m}", "give a positive margin")
        return Compare(name, where, -m, m, metric, "same", groups)
    sides = [s for s in ("above", "below") if s in item]
    if len(sides) != 1:
        raise ctx.fail("group", "a group claim needs exactly one of above or below",
                       "add e.g. below: 0.05")
    x = G.num(item[sides[0]], sides[0], ctx)
    low, high = (x, INF) if sides[0] == "above" else (-INF, x)
    g = G.group(item["group"], "group", domains, ctx)
    return Compare(name, where, low, high, metric, "threshold", (g,))


def _pairs(item: dict, name: str, where: Group, metric: Metric, domains: dict,
           ctx: ClaimContext) -> Compare:
    if "lower" not in item:
        raise ctx.fail("lower", "higher needs lower", "add lower: GROUP (or a list of groups)")
    higher = G.group(item["higher"], "higher", domains, ctx)
    raw_lower = item["lower"] if isinstance(item["lower"], list) else [item["lower"]]
    lowers = G.group_list(raw_lower, "lower", 1, None, domains, ctx)
    by = G.num(item.get("by", 0), "by", ctx)
    if ("more_in" in item) != ("than_in" in item):
        raise ctx.fail("more_in", "more_in and than_in go together",
                       "give both: the difference is larger in more_in than in than_in")
    if "more_in" not in item:
        return Compare(name, where, by, INF, metric, "pairs", (higher, *lowers))
    if len(lowers) != 1:
        raise ctx.fail("lower", "a contrast (more_in/than_in) compares one lower group",
                       "give lower a single group")
    contrast = (G.group(item["more_in"], "more_in", domains, ctx),
                G.group(item["than_in"], "than_in", domains, ctx))
    return Compare(name, where, by, INF, metric, "contrast", (higher, lowers[0]), contrast)


def _only_with(item: dict, form: str, ctx: ClaimContext) -> None:
    """Keys of another form are a mistake, not something to ignore."""
    own = {"higher": {"higher", "lower", "more_in", "than_in", "by"},
           "order": {"order", "by"}, "same": {"same", "within"},
           "group": {"group", "above", "below"}}[form]
    stray = sorted((set(item) & FORM_KEYS) - own)
    if stray:
        label = "higher/lower" if form == "higher" else form
        raise ctx.fail(stray[0], f"does not go with {label}", f"a {label} claim takes "
                       f"{sorted(own)}")


def _trend(item: dict, name: str, where: Group, study: dict, domains: dict,
           ctx: ClaimContext) -> Trend:
    metric = _metric(item, "trend", study, ctx)
    across = item.get("across")
    if not isinstance(across, str) or across not in domains:
        raise ctx.fail("across", f"{across!r} is not a key of this study",
                       f"use one of the varied keys {G.varied_keys(domains)}")
    domain = domains[across]
    if not domain.values or len(domain.values) < 2:
        raise ctx.fail("across", f"{across} is not searched over listed values",
                       "a trend needs a key searched by grid or choice with 2+ values")
    direction = item.get("direction")
    if direction not in ("rising", "falling"):
        raise ctx.fail("direction", f"got {direction!r}", "use rising or falling")
    levels = _levels(item, across, domain, ctx)
    low, high = (0.0, INF) if direction == "rising" else (-INF, 0.0)
    return Trend(name, where, low, high, metric, across, direction, levels)


def _levels(item: dict, across: str, domain: KeyDomain, ctx: ClaimContext) -> tuple[Any, ...]:
    if "values" in item:
        values = item["values"]
        if not isinstance(values, list) or len(values) < 2:
            raise ctx.fail("values", f"got {values!r}", "list 2+ values of "
                           f"{across} in the order of the trend")
        for v in values:
            G.check_value(across, v, domain, ctx)
        return tuple(values)
    if not all(G.orderable(v) for v in domain.values):
        raise ctx.fail("across", f"{across} values {list(domain.values)} have no order",
                       "list them in the trend's order with values: [...]")
    return tuple(sorted(domain.values, key=float))


def _label(item: dict, name: str, where: Group, study: dict, domains: dict,
           ctx: ClaimContext) -> Label:
    raw = item["label"] if isinstance(item["label"], list) else [item["label"]]
    bad = [x for x in raw if x not in LABELS]
    if not raw or bad:
        raise ctx.fail("label", f"unknown label(s) {bad or raw}", f"use one of {list(LABELS)}")
    if "group" not in item:
        raise ctx.fail("group", "a label claim needs the group it is expected for",
                       "add group: {KEY: VALUE} (or group: all)")
    share = G.num(item.get("share", 0.5), "share", ctx)
    if not 0 <= share < 1:
        raise ctx.fail("share", f"must be in [0, 1), got {share}",
                       "0.5 claims most of the group's trials, 0.9 nearly all")
    return Label(name, where, share, INF, tuple(raw), G.group(item["group"], "group",
                                                             domains, ctx))


def _selection(item: dict, name: str, where: Group, study: dict, domains: dict,
               ctx: ClaimContext) -> Selection:
    if item["selection"] not in SELECTIONS:
        raise ctx.fail("selection", f"got {item['selection']!r}", f"use {list(SELECTIONS)}")
    within = G.num(item.get("within", 0), "within", ctx)
    if within < 0:
        raise ctx.fail("within", f"must be >= 0, got {within}", "give a margin >= 0")
    return Selection(name, where, 0.0 - within, INF, item["selection"])


def _metric(item: dict, kind: str, study: dict, ctx: ClaimContext) -> Metric:
    name = item[kind]
    if name not in METRICS:
        raise ctx.fail(kind, f"unknown metric {name!r}", f"use one of {sorted(METRICS)}")
    key, default = METRICS[name]
    for other in ("acc", "epoch"):
        if other in item and other != key:
            raise ctx.fail(other, f"{name} takes no {other}",
                           f"remove it{f' ({name} takes {key})' if key else ''}")
    if key is None:
        return Metric(name)
    if key not in item and default is None:
        raise ctx.fail(key, f"{name} needs {key}", "add e.g. acc: 0.9 (a validation accuracy)")
    param = _metric_param(name, item.get(key, default), ctx)
    if name == "grad_ratio" and not (study.get("train") or {}).get("track_grads", True):
        raise ctx.fail(kind, "grad_ratio needs gradient norms but train.track_grads is false",
                       "set train: {track_grads: true}")
    return Metric(name, param)


def _metric_param(name: str, value: Any, ctx: ClaimContext) -> Any:
    if name in ("epochs_to_acc", "steps_to_acc"):
        acc = G.num(value, "acc", ctx)
        if not 0 < acc <= 1:
            raise ctx.fail("acc", f"must be in (0, 1], got {acc}", "give an accuracy, e.g. 0.9")
        return acc
    if name == "grad_ratio":
        if value not in ("first", "last"):
            raise ctx.fail("epoch", f"got {value!r}", "use first or last")
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ctx.fail("epoch", f"must be an epoch number >= 1, got {value!r}", "e.g. epoch: 1")
    return value
