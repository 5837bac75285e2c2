"""Which member trials train together: configs of one structure (`fused.structure_key`) cut
into groups no larger than fusion pays (`search.fuse`), and never fewer groups than the
cluster has trial slots, so fusion does not idle a node.

    fuse = parse_fuse("auto")                       # "off" | "auto" | an int K >= 1
    groups = make_groups(configs, fuse, slots=4)    # [[0, 3, 5], [1], ...]: config indices
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tune_hw import fused, results, training

FUSE_WORDS = ("auto", "off")


def parse_fuse(value: Any) -> str | int:
    """`search.fuse` as "auto", "off" or a group size K >= 1; ValueError says the rule.

    YAML 1.1 reads a bare `off` as false, so false means "off" too.
    """
    if value is False:
        return "off"
    if isinstance(value, str) and value in FUSE_WORDS:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f"search.fuse is {value!r}: use auto, off or a group size (an int >= 1, "
                     "e.g. fuse: 16)")


def largest_group(config: dict[str, Any], fuse: str | int, device: str = "cpu") -> int:
    """The most members `config`'s structure may put in one group: 1 where it never fuses
    (resnet18, trees, or `auto` at a batch size where fusion loses)."""
    _, hp, train = training.split_config(config)
    if fuse == "off" or hp.get("name") not in fused.FUSABLE_MODELS:
        return 1
    if fuse == "auto":
        return max(1, fused.fusion_pays(hp["name"], train["batch_size"], device))
    return int(fuse)


def make_groups(configs: Sequence[dict[str, Any]], fuse: str | int, slots: int = 1,
                device: str = "cpu") -> list[list[int]]:
    """Indices of `configs` per group: one structure per group, in first-seen order, each at
    most `largest_group`; the largest groups split in halves until there are at least
    min(slots, len(configs)) groups. The repeats of one config (results.config_id) stay in one
    group unless they alone outnumber the largest group, or a group of one config is halved
    to fill the slots."""
    buckets: dict[str, dict[str, list[int]]] = {}  # structure -> config -> its repeats
    for index, config in enumerate(configs):
        repeats = buckets.setdefault(fused.structure_key(config), {})
        repeats.setdefault(results.config_id(config), []).append(index)
    groups: list[list[list[int]]] = []  # a group is a list of units: one config's repeats
    for by_config in buckets.values():
        units = list(by_config.values())
        groups.extend(_pack(units, largest_group(configs[units[0][0]], fuse, device)))
    while len(groups) < min(slots, len(configs)):
        largest = max(range(len(groups)), key=lambda g: _size(groups[g]))
        groups[largest:largest + 1] = _halve(groups[largest])
    return [[i for unit in group for i in unit] for group in groups]


def _size(group: list[list[int]]) -> int:
    return sum(map(len, group))


def _pack(units: list[list[int]], size: int) -> list[list[list[int]]]:
    """Units in order into groups of at most `size` members; a unit larger than `size` is
    cut into groups of its own."""
    groups: list[list[list[int]]] = []
    current: list[list[int]] = []
    for unit in units:
        if len(unit) > size:
            groups.extend([unit[i:i + size]] for i in range(0, len(unit), size))
            continue
        if current and _size(current) + len(unit) > size:
            groups.append(current)
            current = []
        current.append(unit)
    return groups + ([current] if current else [])


def _halve(group: list[list[int]]) -> list[list[list[int]]]:
    """Two groups from one: its units in halves, or the members of its only unit."""
    if len(group) > 1:
        half = (len(group) + 1) // 2
        return [group[:half], group[half:]]
    unit = group[0]
    half = (len(unit) + 1) // 2
    return [[unit[:half]], [unit[half:]]]
