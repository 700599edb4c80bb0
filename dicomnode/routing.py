"""Routing: which models a completed series runs, where its results go, and how urgent it is.

The one place these are decided: :class:`Router` gives the job's priority
when the series completes (in the transaction that queues the job) and the
worker's :class:`Plan` when the job runs, both from the same first matching
rule.  Rules come from ``[[rules]]`` in the configuration and are tried in
order; the first that matches wins.  A rule matches on Modality, the body region
(BodyPartExamined through the vocabulary of :mod:`dicomnode.bodypart`, then the descriptions),
a SeriesDescription regular expression, the SOP class and the calling AE
title (an empty list matches anything).  A series that matches no rule is
ignored, or its instances are forwarded unchanged, as ``[routing]`` says.
Without any rule, each shipped model's own modality and body-part filters
decide (the chest-CT model runs on CT series of the CHEST).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from dicomnode.bodypart import BodyRegions, body_regions, covers
from dicomnode.errors import ConfigError
from storage.facts import SeriesFacts

__all__ = ["PlanAction", "Plan", "Router", "Rule", "RoutingConfig", "SeriesFacts", "URGENT", "first_match"]

URGENT = 10  # job priority of series an urgent rule matches (normal: 0)


class PlanAction(enum.StrEnum):
    """What a job does with its series."""

    RUN = "run"  # run models, send their results
    FORWARD = "forward"  # send the instances on, unchanged
    IGNORE = "ignore"  # nothing to do


UNMATCHED = (PlanAction.IGNORE, PlanAction.FORWARD)


class Model(Protocol):
    """What routing needs to know of a model (an :class:`ai.bundle.Bundle`, without importing torch)."""

    @property
    def name(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def modalities(self) -> tuple[str, ...]: ...
    @property
    def body_parts(self) -> tuple[str, ...]: ...


M = TypeVar("M", bound=Model)


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

        if not (one_of(self.modality, s.modality) and covers(self.body_part, regions(s))):
            return False
        if not (one_of(self.sop_class, s.sop_class_uid) and one_of(self.calling_ae, s.calling_ae)):
            return False
        return self.series_description is None or re.search(self.series_description, s.series_description or "", re.IGNORECASE) is not None


@dataclass(frozen=True)
class RoutingConfig:
    """The ``[routing]`` section: what happens to series no rule matches."""

    unmatched: PlanAction = PlanAction.IGNORE  # ignore | forward
    forward_to: tuple[str, ...] = ()  # destinations for forwarded series; empty: every destination


def first_match(rules: Sequence[Rule], facts: SeriesFacts) -> Rule | None:
    """The first rule that matches, or ``None``."""
    return next((r for r in rules if r.matches(facts)), None)


@dataclass(frozen=True)
class Plan(Generic[M]):
    """What a job does: run models (segmentation first) or forward, and to which destinations."""

    action: PlanAction
    models: tuple[M, ...]
    destinations: tuple[str, ...]  # destination names
    reason: str


class Router:
    """The routing decisions of one configuration.

    Parameters
    ----------
    rules : sequence of Rule
        ``[[rules]]``, tried in order.
    routing : RoutingConfig
        What happens to series no rule matches.
    destinations : sequence of str
        The names of every configured destination (a rule or ``forward_to``
        without destinations means all of them).
    """

    def __init__(self, rules: Sequence[Rule], routing: RoutingConfig, destinations: Sequence[str]) -> None:
        self.rules = tuple(rules)
        self.routing = routing
        self.destinations = tuple(destinations)

    def priority(self, facts: SeriesFacts) -> int:
        """The priority of a newly completed series' job: :data:`URGENT` when its rule says so, else 0."""
        rule = first_match(self.rules, facts)
        return URGENT if rule is not None and rule.urgent else 0

    def _names(self, names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(d for d in self.destinations if not names or d in names)

    def plan(self, facts: SeriesFacts, load: Callable[[str], M], candidates: Callable[[], Sequence[M]]) -> Plan[M]:
        """The first matching rule's plan; without rules, the models whose own filters accept the series.

        Parameters
        ----------
        facts : SeriesFacts
            The series.
        load : callable
            A model by the name a rule gives.
        candidates : callable
            The models to consider when there are no rules (their modality
            and body-part filters decide).
        """
        if self.rules:
            rule = first_match(self.rules, facts)
            if rule is None:
                if self.routing.unmatched == PlanAction.FORWARD:
                    return Plan(PlanAction.FORWARD, (), self._names(self.routing.forward_to), "no routing rule matches; forwarded")
                return Plan(PlanAction.IGNORE, (), (), f"no routing rule matches {describe(facts)}")
            models = tuple(load(m) for m in rule.models)
            action = PlanAction.RUN if models else PlanAction.FORWARD
            return Plan(action, _segmentation_first(models), self._names(rule.destinations), f"rule {rule.name}")
        modality, body = (facts.modality or "").upper(), regions(facts)
        found = tuple(
            m for m in candidates()
            if (not m.modalities or modality in {x.upper() for x in m.modalities}) and covers(m.body_parts, body)
        )
        if not any(m.task == "segmentation" for m in found):
            return Plan(PlanAction.IGNORE, (), (), f"no model applies to {describe(facts)}")
        why = "model filters; body part " + body.describe()
        if not body.known:
            why += ": the model's anatomy gate decides from the image"
        return Plan(PlanAction.RUN, _segmentation_first(found), self.destinations, why)


def _segmentation_first(models: tuple[M, ...]) -> tuple[M, ...]:
    return tuple(sorted(models, key=lambda m: m.task != "segmentation"))


def regions(facts: SeriesFacts) -> BodyRegions:
    """The body regions of a series: BodyPartExamined through the vocabulary, then its descriptions."""
    return body_regions(facts.body_part, facts.series_description, facts.study_description, facts.protocol_name)


def describe(facts: SeriesFacts) -> str:
    """How a log line or a job's reason names a series (no patient data)."""
    return f"modality {facts.modality or '?'} / body part {facts.body_part or '(none)'}, read as {regions(facts).describe()}"


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
    unmatched = data.get("unmatched", PlanAction.IGNORE)
    if unmatched not in UNMATCHED:
        raise ConfigError(f"routing.unmatched: must be ignore or forward, got {unmatched!r}")
    forward = _strings("routing.forward_to", data.get("forward_to", []))
    for d in forward:
        if d not in destinations:
            raise ConfigError(f"routing.forward_to: no destination named {d!r} (configured: {', '.join(destinations) or 'none'})")
    return RoutingConfig(unmatched=PlanAction(unmatched), forward_to=forward)
