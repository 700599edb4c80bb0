"""Routing rules: matching, validation, the worker's plan, urgency and forwarding with real peers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine

from dicomnode.config import parse_config
from dicomnode.errors import ConfigError
from dicomnode.node import Node
from dicomnode.routing import URGENT, Router, RoutingConfig, Rule, SeriesFacts, first_match
from dicomnode.jobs.worker import JobRunner
from storage.queue import ClaimedJob
from tests.conftest import jobs_of
from tests.helpers import storescu, wait_for
from tests.peers import StoreSCP

CHEST = SeriesFacts("CT", "CHEST", "Thorax 1.0 B31f", "1.2.840.10008.5.1.4.1.1.2", "SCANNER1")
DEST = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
        {"name": "research", "ae_title": "RES", "host": "127.0.0.1", "port": 105}]


def test_a_rule_matches_on_every_field() -> None:
    rule = Rule("chest", modality=("ct",), body_part=("CHEST",), series_description=r"thorax|chest",
                sop_class=("1.2.840.10008.5.1.4.1.1.2",), calling_ae=("SCANNER1",))
    assert rule.matches(CHEST)
    assert not rule.matches(replace(CHEST, modality="MR"))
    assert not rule.matches(replace(CHEST, body_part="HEAD"))
    assert rule.matches(replace(CHEST, body_part=None))  # the description says Thorax
    assert rule.matches(replace(CHEST, body_part="thorax")) and rule.matches(replace(CHEST, body_part="CHEST_ABDOMEN_PELVIS"))
    assert not rule.matches(replace(CHEST, series_description="Abdomen"))
    assert not rule.matches(replace(CHEST, calling_ae="OTHER"))
    assert not rule.matches(replace(CHEST, sop_class_uid="1.2.840.10008.5.1.4.1.1.4"))
    assert Rule("any").matches(replace(CHEST, modality=None))  # no filters: matches anything
    assert first_match([Rule("mr", modality=("MR",)), Rule("ct", modality=("CT",))], CHEST).name == "ct"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"rules": [{"modalty": ["CT"]}]}, "rules[0].modalty: unknown key"),
        ({"rules": [{"series_description": "("}]}, "rules[0].series_description: not a valid regular expression"),
        ({"rules": [{"destinations": ["nowhere"]}]}, "rules[0].destinations: no destination named 'nowhere'"),
        ({"rules": [{"urgent": "yes"}]}, "rules[0].urgent: must be true or false"),
        ({"routing": {"unmatched": "drop"}}, "routing.unmatched: must be ignore or forward"),
    ],
)
def test_bad_rules_are_refused_with_their_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[").replace("]", r"\]")):
        parse_config({"destinations": DEST, **data})


def job(**facts: str | None) -> ClaimedJob:
    f = {"modality": "CT", "body_part": "CHEST", "series_description": "Thorax", "calling_ae": "SCANNER1",
         "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", **facts}
    return ClaimedJob(id=1, series_id=1, version=1, attempts=1, series_uid="1.2", study_uid="1", reclaimed=False,
                      facts=SeriesFacts(**f))


def test_the_plan_follows_the_first_matching_rule() -> None:
    cfg = parse_config({
        "destinations": DEST,
        "rules": [
            {"name": "chest", "modality": ["CT"], "body_part": ["CHEST"], "models": ["chest-ct-lungs-nodules"], "destinations": ["pacs"]},
            {"name": "mr to research", "modality": ["MR"], "destinations": ["research"]},
        ],
    })
    runner = JobRunner(None, cfg)  # type: ignore[arg-type]
    plan = runner.plan(job())
    assert plan.action == "run" and [b.name for b in plan.models] == ["chest-ct-lungs-nodules"]
    assert plan.destinations == ("pacs",)
    plan = runner.plan(job(modality="MR"))
    assert plan.action == "forward" and plan.destinations == ("research",)
    plan = runner.plan(job(modality="US"))
    assert plan.action == "ignore" and plan.reason.startswith("no routing rule matches modality US / body part CHEST, read as CHEST")
    forward = JobRunner(None, replace(cfg, routing=replace(cfg.routing, unmatched="forward")))  # type: ignore[arg-type]
    assert forward.plan(job(modality="US")).action == "forward"


def test_without_rules_the_models_own_filters_decide() -> None:
    runner = JobRunner(None, parse_config({"destinations": DEST}))  # type: ignore[arg-type]
    plan = runner.plan(job())
    assert plan.action == "run" and plan.models[0].name == "chest-ct-lungs-nodules" and len(plan.destinations) == 2
    assert runner.plan(job(body_part="HEAD")).action == "ignore"
    assert runner.plan(job(modality="MR")).action == "ignore"


def test_urgent_rules_put_their_jobs_first_and_unmatched_series_are_forwarded(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]], tmp_path: Path
) -> None:
    pacs = StoreSCP(tmp_path / "pacs").start()
    try:
        node = node_factory(extra_toml=(
            "[worker]\nenabled = true\n[delivery]\npoll_seconds = 0.1\n"
            f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {pacs.port}\n'
            '[[rules]]\nname = "stroke"\nbody_part = ["HEAD"]\nurgent = true\nmodels = []\n'
            '[routing]\nunmatched = "forward"\n'
        ), series_toml="quiet_seconds = 0.5")
        head = make_series("head", slices=4, body_part="HEAD")
        chest = make_series("chest", slices=3)
        assert storescu(node.cfg.node.port, head).returncode == 0
        assert storescu(node.cfg.node.port, chest, calling="CT2").returncode == 0
        wait_for(lambda: len(pacs.files()) == 7 and [j.state for j in jobs_of(node)] == ["done", "done"], 60, what="both forwarded")
        jobs = jobs_of(node)
        assert [j.priority for j in jobs] == [URGENT, 0]
    finally:
        pacs.stop()


def test_urgency_is_decided_in_the_transaction_that_queues_the_job(engine: Engine) -> None:
    from sqlalchemy import select

    from storage.instances import record_instance
    from storage.models import Job
    from storage.series import complete_series, open_series
    from storage.states import CompletionReason
    from tests.helpers import rec

    router = Router([Rule("stroke", body_part=("HEAD",), urgent=True)], RoutingConfig(), ["pacs"])
    seen: list[SeriesFacts] = []

    def priority(facts: SeriesFacts) -> int:
        seen.append(facts)
        return router.priority(facts)

    for series, body in (("1.1", "HEAD"), ("1.2", "CHEST")):
        record_instance(engine, rec(f"{series}.1", series=series, body_part=body, modality="CT", calling_ae="CT1"))
    jobs = {}
    for s in open_series(engine):
        jobs[s.id] = complete_series(
            engine, s.id, seen_count=s.instance_count, seen_last_received_at=s.last_received_at,
            reason=CompletionReason.QUIET_PERIOD, priority=priority,
        )
    with engine.connect() as conn:  # the row is born with its priority: no later update is involved
        rows = dict(conn.execute(select(Job.series_id, Job.priority)).all())
    assert sorted(rows.values()) == [0, URGENT]
    assert {f.body_part for f in seen} == {"HEAD", "CHEST"} and all(f.calling_ae == "CT1" for f in seen)
