"""The command line, run as users run it: a real ``dicomnode serve`` process and the other commands."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import NodeProcess, wait_for, write_config

COMMANDS = ["serve", "echo", "send", "jobs"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicomnode", *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[NodeProcess, Path]]:
    cfg = write_config(tmp_path, series="quiet_seconds = 30")
    node = NodeProcess(cfg, tmp_path / "node.log").start()
    yield node, cfg
    node.stop()


def test_top_level_help_lists_commands() -> None:
    r = run("--help")
    assert r.returncode == 0
    for cmd in COMMANDS:
        assert cmd in r.stdout


@pytest.mark.parametrize("cmd", COMMANDS)
def test_each_command_explains_itself(cmd: str) -> None:
    r = run(cmd, "--help")
    assert r.returncode == 0
    assert "usage: dicomnode " + cmd in r.stdout
    assert len(r.stdout.splitlines()) > 5


def test_version_and_console_script() -> None:
    exe = Path(sys.executable).with_name("dicomnode")
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("dicomnode ")


def test_bad_config_fails_at_startup_naming_the_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, node='max_associations = "many"')
    r = run("serve", "--config", str(cfg))
    assert r.returncode == 1
    assert "node.max_associations" in r.stderr
    r = run("jobs", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 1 and "does not exist" in r.stderr


def test_env_override_bad_value_names_the_key(tmp_path: Path) -> None:
    import os

    cfg = write_config(tmp_path)
    r = run("jobs", "--config", str(cfg), env=dict(os.environ, DICOMNODE_SERIES__QUIET_SECONDS="soon"))
    assert r.returncode == 1 and "series.quiet_seconds" in r.stderr


def test_echo_send_and_jobs_against_a_running_node(
    served: tuple[NodeProcess, Path], make_series: Callable[..., list[Path]]
) -> None:
    node, cfg = served
    peer = f"DICOMNODE@127.0.0.1:{node.port}"
    r = run("echo", peer)
    assert r.returncode == 0 and "success" in r.stdout, r.stderr

    files = make_series("cli", slices=6)
    r = run("send", str(files[0].parent), "--to", peer, "--calling-ae", "CLITEST")
    assert r.returncode == 0, r.stderr
    assert "sent 6 of 6" in r.stdout
    assert "6/6" in r.stderr  # the progress bar

    def jobs() -> list[dict[str, object]] | None:
        out = run("jobs", "--config", str(cfg), "--json")
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        return data or None

    [job] = wait_for(jobs, 30, what="a job")
    assert job["instance_count"] == 6 and job["state"] == "queued"
    assert job["completion_reason"] == "association_released" and job["calling_ae"] == "CLITEST"
    table = run("jobs", "--config", str(cfg))
    assert "association_released" in table.stdout and "queued" in table.stdout


def test_send_to_a_named_destination_and_failures(tmp_path: Path, served: tuple[NodeProcess, Path], make_series: Callable[..., list[Path]]) -> None:
    node, _ = served
    cfg = tmp_path / "client.toml"
    cfg.write_text(f'[[destinations]]\nname = "ai"\nae_title = "DICOMNODE"\nhost = "127.0.0.1"\nport = {node.port}\n')
    files = make_series("named", slices=2)
    r = run("send", *map(str, files), "--to", "ai", "--config", str(cfg), "-q")
    assert r.returncode == 0, r.stderr
    r = run("send", *map(str, files), "--to", "nowhere", "--config", str(cfg))
    assert r.returncode == 1 and "no destination named 'nowhere'" in r.stderr and "ai" in r.stderr
    r = run("echo", "NOBODY@127.0.0.1:1")
    assert r.returncode == 1 and "cannot connect" in r.stderr
    r = run("echo", "not-a-peer")
    assert r.returncode == 1 and "AE@HOST:PORT" in r.stderr
