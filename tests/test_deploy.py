"""Deployment files: docker-compose.yml, the Orthanc demo config, the systemd units and docs/deploy.md.

Offline lint checks that keep these files consistent with each other, with the
Dockerfile and with the node's real configuration keys.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from dicomnode import config as node_config
from dicomnode.config import apply_env, parse_config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ORTHANC = ROOT / "deploy" / "orthanc.json"
UNITS = {"serve": ROOT / "deploy" / "dicomnode.service", "worker": ROOT / "deploy" / "dicomnode-worker@.service"}
DOCS = ROOT / "docs" / "deploy.md"
ECHO = ["dicomnode", "echo", "DICOMNODE@127.0.0.1:11112"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is in the test extra (pip install -e '.[test]')")
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return doc


def container_ports(service: dict[str, Any]) -> dict[int, str]:
    """container port -> the published spec ("HOST_IP:HOST:CONTAINER" short syntax)."""
    out = {}
    for spec in service.get("ports", []):
        out[int(str(spec).split(":")[-1].split("/")[0])] = str(spec)
    return out


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default}, with every variable unset."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def node_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "use the mapping form for environment"
    return {k: interpolate(str(v)) for k, v in env.items()}


def demo_config(compose: dict[str, Any], service: dict[str, Any]) -> node_config.Config:
    """The configuration the service's container sees: its mounted config plus its environment."""
    (mount,) = service["configs"]
    env = node_env(service)
    assert mount["target"] == env["DICOMNODE_CONFIG"] == "/app/config/dicomnode.toml"
    data = tomllib.loads(compose["configs"][mount["source"]]["content"])
    return parse_config(apply_env(data, env))


# ------------------------------------------------------------------ compose


def test_compose_services_ports_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"dicomnode", "orthanc"} <= set(services)
    node, orthanc = services["dicomnode"], services["orthanc"]
    assert node["build"] == "." and node["restart"] == "unless-stopped"
    assert "orthanc" in node["depends_on"]
    # DICOM on every interface; the status page on loopback only (no login, shows job details).
    ports = container_ports(node)
    assert ports[11112] == "11112:11112"
    assert ports[8080].startswith("127.0.0.1:")
    assert {4242, 8042} <= set(container_ports(orthanc))
    # Storage in a named volume at the image's storage path.
    assert "dicomnode-storage:/app/storage" in node["volumes"]
    assert "dicomnode-storage" in compose["volumes"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert '"/app/storage"' in dockerfile and '"/app/config"' in dockerfile
    # Time for a running job to finish before the container is killed.
    assert node["stop_grace_period"] in ("5m", "300s")
    # The GPU reservation is there to uncomment, in the Compose syntax.
    text = COMPOSE.read_text()
    for line in ("deploy:", "reservations:", "- driver: nvidia", "capabilities: [gpu]"):
        assert re.search(r"#\s*" + re.escape(line), text), line


def test_compose_healthcheck_is_a_dicom_echo(compose: dict[str, Any]) -> None:
    test = compose["services"]["dicomnode"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1:4] == ECHO
    # The same check as the image's HEALTHCHECK.
    assert '"' + '", "'.join(ECHO) + '"' in (ROOT / "Dockerfile").read_text()


def test_compose_demo_config_sends_results_to_orthanc(compose: dict[str, Any]) -> None:
    cfg = demo_config(compose, compose["services"]["dicomnode"])
    assert cfg.web.host == "0.0.0.0" and cfg.web.port == 8080
    assert (cfg.node.ae_title, cfg.node.port) == ("DICOMNODE", 11112)
    assert cfg.node.database_url.startswith("sqlite:///storage/")  # relative to /app, so in the volume
    pacs = cfg.destination("pacs")
    orthanc = json.loads(ORTHANC.read_text())
    assert (pacs.host, pacs.port, pacs.ae_title) == ("orthanc", orthanc["DicomPort"], orthanc["DicomAet"])
    # Orthanc knows the node, by its compose service name, so a user can push a study to it.
    assert orthanc["DicomModalities"]["dicomnode"] == [cfg.node.ae_title, "dicomnode", cfg.node.port]
    assert "./deploy/orthanc.json:/etc/orthanc/orthanc.json:ro" in compose["services"]["orthanc"]["volumes"]
    assert orthanc["RegisteredUsers"] and orthanc["AuthenticationEnabled"] is True


def test_compose_scale_profile_shares_database_and_storage(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "worker"):
        assert services[name]["profiles"] == ["scale"], name
    for name in ("dicomnode", "orthanc"):
        assert "profiles" not in services[name], name
    worker, node = services["worker"], services["dicomnode"]
    assert worker["command"] == ["worker"] and node["command"] == ["serve"]
    assert worker["image"] == node["image"]
    assert worker["healthcheck"] == {"disable": True}  # no listener to echo
    assert "dicomnode-storage:/app/storage" in worker["volumes"]
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    url = demo_config(compose, worker).node.database_url
    assert url.startswith("postgresql+psycopg://") and "@postgres/" in url
    # The node follows the same variable, so that it queues jobs in the same database.
    raw = node["environment"]["DICOMNODE_NODE__DATABASE_URL"]
    assert raw.startswith("${DICOMNODE_DATABASE_URL:-") and "DICOMNODE_DATABASE_URL" in worker["environment"]["DICOMNODE_NODE__DATABASE_URL"]
    pg = services["postgres"]["environment"]
    assert url.split("//")[1].startswith(f"{pg['POSTGRES_USER']}:")
    assert url.rsplit("/", 1)[1] == pg["POSTGRES_DB"]


# ------------------------------------------------------------------ systemd


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def assignments(path: Path, key: str) -> list[str]:
    """Every value of a key that systemd lets repeat (Environment=, ReadWritePaths=)."""
    return [line.split("=", 1)[1] for line in path.read_text().splitlines() if line.startswith(key + "=")]


@pytest.mark.parametrize("kind", sorted(UNITS))
def test_systemd_unit_is_hardened_and_runs_dicomnode(kind: str) -> None:
    path = UNITS[kind]
    u = unit(path)
    assert {"Unit", "Service", "Install"} <= set(u.sections())
    s = u["Service"]
    assert s["ExecStart"] == f"/opt/dicomnode/.venv/bin/dicomnode {kind}"
    assert s["User"] == "dicomnode" and s["Restart"] == "on-failure"
    assert s["KillMode"] == "mixed"  # SIGTERM to the node only, not to its decoder processes
    assert int(s["TimeoutStopSec"]) >= 180  # a worker thread gets 60 s to finish its job, the sender 30 s
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes", "ProtectHome": "yes"}.items():
        assert s[key] == value, key
    assert "PrivateDevices" not in s and "ProtectClock" not in s  # both cut off /dev/nvidia*
    # The working directory holds storage/ (relative defaults) and is writable.
    assert s["WorkingDirectory"] == "/var/lib/dicomnode" and s["StateDirectory"] == "dicomnode"
    assert "/var/lib/dicomnode" in " ".join(assignments(path, "ReadWritePaths")).split()
    env = " ".join(assignments(path, "Environment")).split()
    assert "DICOMNODE_CONFIG=/etc/dicomnode/dicomnode.toml" in env
    for assignment in env:
        name = assignment.split("=", 1)[0]
        if name.startswith("DICOMNODE_") and name != "DICOMNODE_CONFIG":
            apply_env({}, {name: "x"})  # a real section, or ConfigError
    assert u["Install"]["WantedBy"] == "multi-user.target"
    if kind == "worker":
        assert "CUDA_VISIBLE_DEVICES=%i" in env


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` finds no error or unknown key (when systemd is installed)."""
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed; the units were still parsed above")
    fake = tmp_path / "dicomnode"  # verify insists that ExecStart exists
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    for path in UNITS.values():
        (tmp_path / path.name).write_text(path.read_text().replace("/opt/dicomnode/.venv/bin/dicomnode", str(fake)))
    targets = [tmp_path / "dicomnode.service", tmp_path / "dicomnode-worker@0.service"]
    r = subprocess.run([exe, "verify", "--man=no", *map(str, targets)], capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    if r.returncode != 0 and not re.search(r"dicomnode(-worker@0)?\.service", out):
        pytest.skip(f"systemd-analyze cannot run here: {out.strip()[:300]}")
    ours = [line for line in out.splitlines() if "dicomnode" in line]
    assert r.returncode == 0 and not ours, out


# ------------------------------------------------------------------- docs


def test_deploy_docs_cover_the_essentials() -> None:
    text = DOCS.read_text()
    for needle in (
        "scripts/install.sh", "scripts/serve.sh", "docker compose up", "COMPOSE_PROFILES=scale", "--scale worker=2",
        "deploy/dicomnode.service", "dicomnode-worker@", "FOR UPDATE SKIP LOCKED", "lease_seconds", "worker.threads",
        "/healthz", "/metrics", "scrape_configs", "dicomnode echo", "dicomnode jobs", "dicomnode retry",
        "DICOMNODE_WEB__HOST", "[node.tls]", "pg_dump", "Alembic", "11112", "8080",
    ):
        assert needle in text, needle
    # Relative links point at files that exist.
    for target in re.findall(r"\]\((\.\./[^)#]+)", text):
        assert (DOCS.parent / target).resolve().exists(), target


def test_documented_environment_variables_are_real_keys() -> None:
    """Every DICOMNODE_<SECTION>__<KEY> in the deployment files names a real configuration key."""
    sections = {f.name: f.type for f in dataclasses.fields(node_config.Config)}
    found = set()
    for path in (DOCS, COMPOSE, *UNITS.values(), ROOT / "Dockerfile"):
        found |= set(re.findall(r"DICOMNODE_([A-Z]+)__([A-Z]+(?:_[A-Z]+)*)(?:__([A-Z]+(?:_[A-Z]+)*))?", path.read_text()))
    assert found
    for section, key, sub in found:
        assert section.lower() in sections, f"DICOMNODE_{section}__{key}"
        annotation = sections[section.lower()]  # a string under `from __future__ import annotations`
        cls = getattr(node_config, annotation) if isinstance(annotation, str) else annotation
        names = {f.name for f in dataclasses.fields(cls)}
        assert key.lower() in names, f"DICOMNODE_{section}__{key}"
        if sub:
            assert key.lower() == "tls" and sub.lower() in {f.name for f in dataclasses.fields(node_config.TLSConfig)}
