"""Groups of trials in claims, checked against the values a study lets each key take.

A group is a mapping of keys to values (`{model.name: cnn, model.kernel_size: [3, 5]}`), or
`all`; `study_domains` reads what each key can be from the resolved study (fixed sections,
`space` distributions, whole-section variants), so a value the run can never have is an error
before anything runs, not an empty group afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tune_hw import strict_yaml
from tune_hw.distributions import Distribution, variant_label
from tune_hw.errors import UserError

SECTIONS = ("dataset", "model", "train")
INF = math.inf


@dataclass(frozen=True)
class Selector:
    """One key's condition: its value is one of `values`, or lies in [low, high]."""

    key: str
    values: tuple[Any, ...] = ()
    low: float = -INF
    high: float = INF

    def describe(self) -> str:
        if not self.values:
            return f"{self.key} in [{text(self.low)}, {text(self.high)}]"
        if len(self.values) == 1:
            return f"{self.key}={text(self.values[0])}"
        return f"{self.key} in {{{', '.join(text(v) for v in self.values)}}}"


@dataclass(frozen=True)
class Group:
    """Trials whose every selector matches; no selector means all trials."""

    selectors: tuple[Selector, ...] = ()

    def describe(self) -> str:
        return ", ".join(s.describe() for s in self.selectors) or "all trials"

    def __and__(self, other: Group) -> Group:
        return Group(self.selectors + other.selectors)


ALL = Group()


@dataclass(frozen=True)
class KeyDomain:
    """What a study lets a key take: listed values, or a numeric range (values empty)."""

    values: tuple[Any, ...]
    low: float = -INF
    high: float = INF

    @property
    def varied(self) -> bool:
        return len(self.values) > 1 or not self.values


@dataclass
class ClaimContext:
    """Where a claim sits, for error messages that name the file, the claim and the key."""

    where: str
    index: int
    name: str = ""

    def fail(self, key: str, problem: str, fix: str) -> UserError:
        who = f"claims[{self.index}]" + (f" ({self.name!r})" if self.name else "")
        return UserError(f"{self.where}: {who}: {key}: {problem}; {fix}")


# ------------------------------------------------------------------------------- groups

def group(raw: Any, key: str, domains: dict[str, KeyDomain], ctx: ClaimContext) -> Group:
    """`all`, {} or a mapping of KEY: VALUE into a Group checked against the study."""
    if raw == "all" or raw == {}:
        return ALL
    if not isinstance(raw, dict):
        raise ctx.fail(key, f"a group must be a mapping or 'all', got {raw!r}",
                       "write e.g. {model.name: mlp}")
    return Group(tuple(_selector(k, v, domains, ctx) for k, v in raw.items()))


def group_list(raw: Any, key: str, at_least: int, at_most: int | None,
                domains: dict[str, KeyDomain], ctx: ClaimContext) -> tuple[Group, ...]:
    count = f"{at_least}" if at_most == at_least else f"{at_least}+"
    if not isinstance(raw, list) or not at_least <= len(raw) <= (at_most or len(raw)):
        raise ctx.fail(key, f"needs a list of {count} groups, got {raw!r}",
                       f"write {key}: [{{KEY: VALUE}}, ...]")
    return tuple(group(g, key, domains, ctx) for g in raw)


def _selector(key: Any, value: Any, domains: dict[str, KeyDomain], ctx: ClaimContext) -> Selector:
    if key not in domains:
        raise ctx.fail(f"{key}", "not a key of this study",
                       f"use one of the varied keys {varied_keys(domains)} (or a fixed one)")
    domain = domains[key]
    if isinstance(value, dict):
        return _range(key, value, domain, ctx)
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ctx.fail(key, "an empty list matches nothing", "list at least one value")
    for v in values:
        check_value(key, v, domain, ctx)
    return Selector(key, tuple(values))


def _range(key: str, value: dict, domain: KeyDomain, ctx: ClaimContext) -> Selector:
    if not value or set(value) - {"min", "max"}:
        raise ctx.fail(key, f"a range takes min and/or max, got {value!r}",
                       "write e.g. {min: 0.1, max: 1.0}")
    low = num(value.get("min", -INF), f"{key}.min", ctx)
    high = num(value.get("max", INF), f"{key}.max", ctx)
    inside = [v for v in domain.values if _is_number(v) and low <= v <= high]
    if low > high or (domain.values and not inside) or \
            (not domain.values and (high < domain.low or low > domain.high)):
        raise ctx.fail(key, f"the range [{text(low)}, {text(high)}] holds none of the "
                       f"study's values ({_domain_text(domain)})", "widen or move the range")
    return Selector(key, (), low, high)


def check_value(key: str, value: Any, domain: KeyDomain, ctx: ClaimContext) -> None:
    hint = " (YAML reads it as text: write it with a dot, e.g. 1.0e-4)" \
        if isinstance(value, str) and strict_yaml.looks_numeric(value) else ""
    if domain.values:
        if not any(same_value(value, v) for v in domain.values):
            raise ctx.fail(key, f"{value!r} is not a value of this study{hint}",
                           f"use one of {list(domain.values)}")
    elif not _is_number(value) or not domain.low <= value <= domain.high:
        raise ctx.fail(key, f"{value!r} is outside the searched range{hint}",
                       f"use a number in [{text(domain.low)}, {text(domain.high)}] or a "
                       "range {min: X, max: X}")


def same_value(a: Any, b: Any) -> bool:
    """Equal as hyperparameter values: bools only equal bools, numbers within 1e-9."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b or str(a) == str(b)


# ------------------------------------------------------------------------ study domains

def study_domains(study: dict[str, Any], where: str = "the study") -> dict[str, KeyDomain]:
    """Every key a claim may select on, with the values (or range) the study gives it."""
    domains: dict[str, KeyDomain] = {}
    for section in SECTIONS:
        for k, v in (study.get(section) or {}).items():
            domains[f"{section}.{k}"] = KeyDomain((v,))
    for key, spec in (study.get("space") or {}).items():
        dist = Distribution.parse(spec, f"space.{key}", where)
        if dist.is_range:
            domains[key] = KeyDomain((), float(dist.low), float(dist.high))
        elif "." not in key and dist.mappings():
            domains.update(_section_domains(key, study.get(key) or {}, dist.mappings()))
        else:
            domains[key] = KeyDomain(dist.values)
    return domains


def _section_domains(section: str, fixed: dict, variants: list[dict]) -> dict[str, KeyDomain]:
    """A whole-section space: the section's variant labels, and each key's values."""
    out = {section: KeyDomain(tuple(variant_label(v) for v in variants))}
    keys = dict.fromkeys([*fixed, *(k for v in variants for k in v)])
    for k in keys:
        values: list[Any] = []
        for v in variants:
            x = v.get(k, fixed.get(k))
            if x is not None and not any(same_value(x, y) for y in values):
                values.append(x)
        out[f"{section}.{k}"] = KeyDomain(tuple(values))
    return out


# ------------------------------------------------------------------------------ helpers

def num(value: Any, key: str, ctx: ClaimContext) -> float:
    if _is_number(value):
        return float(value)
    hint = " (YAML reads it as text: write it with a dot, e.g. 1.0e-4)" \
        if isinstance(value, str) and strict_yaml.looks_numeric(value) else ""
    raise ctx.fail(key, f"must be a number, got {value!r}{hint}", "give a number")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        not math.isnan(value)


def orderable(value: Any) -> bool:
    return isinstance(value, (bool, int, float))


def varied_keys(domains: dict[str, KeyDomain]) -> list[str]:
    return sorted(k for k, d in domains.items() if d.varied)


def _domain_text(domain: KeyDomain) -> str:
    if domain.values:
        return ", ".join(text(v) for v in domain.values)
    return f"[{text(domain.low)}, {text(domain.high)}]"


def text(value: Any) -> str:
    if isinstance(value, float):
        return "-inf" if value == -INF else "inf" if value == INF else f"{value:g}"
    return str(value)
