#!/usr/bin/env bash
# Install everything into ./.venv, then run the node on its embedded defaults
# (config/dicomnode.toml: AE DICOMNODE on port 11112, SQLite and files under storage/).
# Extra arguments go to `dicomnode serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/dicomnode serve --config "${DICOMNODE_CONFIG:-config/dicomnode.toml}" "$@"
