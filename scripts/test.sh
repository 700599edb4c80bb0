#!/usr/bin/env bash
# Install everything (Python packages into ./.venv, and dcmtk, dicom3tools, dcm2niix,
# Orthanc and PostgreSQL from apt when missing), then run the whole test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --test-tools
export TCP_NODELAY=1   # dcmtk tools are ~27x slower over loopback without it
exec .venv/bin/python -m pytest -ra --durations=25 "$@"  # the slowest tests in every CI log: the suite must stay under 20 minutes on 2 cores
