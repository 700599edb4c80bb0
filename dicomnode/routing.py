"""Routing rules: which models a completed series runs, where its results go, and how urgent it is.

Rules come from ``[[rules]]`` in the configuration and are tried in order;
the first that matches wins.  A rule matches on Modality, BodyPartExamined,
a SeriesDescription regular expression, the SOP class and the calling AE
title (an empty list matches anything).  A series that matches no rule is
ignored, or its instances are forwarded unchanged, as ``[routing]`` says.
Without any rule, each shipped model's own modality and body-part filters
decide (the chest-CT model runs on CT series of the CHEST).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dicomnode.errors import ConfigError

UNMATCHED = ("ignore", "forward")


@dataclass(frozen=True)
class SeriesFacts:
    """What routing looks at (all from the series' headers and association)."""

    modality: str | None
    body_part: str | None
    series_description: str | None
    sop_class_uid: str | None
    calling_ae: str | None


@dataclass(frozen=True)
class Rule:
    """One ``[[rules]]`` entry."""

    name: str
    modality: tuple[str, ...] = ()
    body_part: tuple[str, ...] = ()
    series_description: str | None = None  # a regular expression, searched case-insensitively
    sop_class: tuple[str, ...] = ()
    calling_ae: tuple[str, ...] = ()
    models: tuple[str, ...] = ()  # bundle names or folders
    destinations: tuple[str, ...] = ()  # empty: every destination
    urgent: bool = False

    def matches(self, s: SeriesFacts) -> bool:
        """Whether every filter of the rule accepts the series."""

        def one_of(allowed: tuple[str, ...], value: str | None) -> bool:
            return not allowed or (value or "").strip().upper() in {a.upper() for a in allowed}

        if not (one_of(self.modality, s.modality) and one_of(self.body_part, s.body_part)):
            return False
        if not (one_of(self.sop_class, s.sop_class_uid) and one_of(self.calling_ae, s.calling_ae)):
            return False
        return self.series_description is None or re.search(self.series_description, s.series_description or "", re.IGNORECASE) is not None


@dataclass(frozen=True)
class RoutingConfig:
    """The ``[routing]`` section: what happens to series no rule matches."""

    unmatched: str = "ignore"  # ignore | forward
    forward_to: tuple[str, ...] = ()  # destinations for forwarded series; empty: every destination


def first_match(rules: Sequence[Rule], facts: SeriesFacts) -> Rule | None:
    """The first rule that matches, or ``None``."""
    return next((r for r in rules if r.matches(facts)), None)


def _strings(key: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
        raise ConfigError(f"{key}: must be a list of strings, got {v!r}")
    return tuple(x.strip() for x in v)


def parse_rules(data: Any, destinations: Sequence[str]) -> tuple[Rule, ...]:
    """Validate ``[[rules]]``; destinations must be configured ones.

    Raises
    ------
    ConfigError
        A key is unknown or a value invalid; the message names it.
    """
    if not isinstance(data, list):
        raise ConfigError(f"rules: must be an array of tables ([[rules]]), got {data!r}")
    rules = []
    allowed = set(Rule.__dataclass_fields__)
    for i, item in enumerate(data):
        key = f"rules[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{key}: must be a table")
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})")
        regex = item.get("series_description")
        if regex is not None:
            try:
                re.compile(regex)
            except (re.error, TypeError) as exc:
                raise ConfigError(f"{key}.series_description: not a valid regular expression: {exc}") from exc
        urgent = item.get("urgent", False)
        if not isinstance(urgent, bool):
            raise ConfigError(f"{key}.urgent: must be true or false, got {urgent!r}")
        rule = Rule(
            name=str(item.get("name", f"rule {i + 1}")),
            series_description=regex,
            urgent=urgent,
            **{k: _strings(f"{key}.{k}", item.get(k, [])) for k in ("modality", "body_part", "sop_class", "calling_ae", "models", "destinations")},
        )
        for d in rule.destinations:
            if d not in destinations:
                raise ConfigError(f"{key}.destinations: no destination named {d!r} (configured: {', '.join(destinations) or 'none'})")
        rules.append(rule)
    return tuple(rules)


def parse_routing(data: Any, destinations: Sequence[str]) -> RoutingConfig:
    """Validate ``[routing]``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"routing: must be a table, got {data!r}")
    unknown = sorted(set(data) - {"unmatched", "forward_to"})
    if unknown:
        raise ConfigError(f"routing.{unknown[0]}: unknown key (allowed: forward_to, unmatched)")
    unmatched = data.get("unmatched", "ignore")
    if unmatched not in UNMATCHED:
        raise ConfigError(f"routing.unmatched: must be ignore or forward, got {unmatched!r}")
    forward = _strings("routing.forward_to", data.get("forward_to", []))
    for d in forward:
        if d not in destinations:
            raise ConfigError(f"routing.forward_to: no destination named {d!r} (configured: {', '.join(destinations) or 'none'})")
    return RoutingConfig(unmatched=unmatched, forward_to=forward)
