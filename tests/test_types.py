"""The type checker is part of the build: mypy over dicomnode, ai and storage (configuration in setup.cfg)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_passes() -> None:
    exe = shutil.which("mypy") or str(Path(sys.executable).with_name("mypy"))
    if not Path(exe).exists():
        if os.environ.get("CI"):
            pytest.fail("mypy is not installed; scripts/test.sh installs the [test] extra")
        pytest.skip("mypy is not installed (scripts/test.sh installs it)")
    # The [mypy] section of setup.cfg names the packages, the strictness and warn_unused_ignores.
    r = subprocess.run([exe, "--config-file", "setup.cfg"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]
