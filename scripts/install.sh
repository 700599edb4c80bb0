#!/usr/bin/env bash
# Install dicomnode into ./.venv (and, with --test-tools, the apt tools the tests use).
#
# Usage: scripts/install.sh [--test-tools]
#
# Idempotent: a second run only checks what is already there.  On a CPU-only
# host torch comes in as the pinned CPU wheel (torch==2.13.0) *before* anything
# else, so that no dependency can pull the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

TEST_TOOLS=0
for arg in "$@"; do
    case "$arg" in
        --test-tools) TEST_TOOLS=1 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done

log() { printf '[install] %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        log "need root to run: $*"; return 1; fi
}

if [ "$TEST_TOOLS" = 1 ]; then
    # Real peers for the tests: dcmtk (storescu/storescp/echoscu/dcmcjpeg...), dicom3tools
    # (dciodvfy), dcm2niix, Orthanc (a real PACS) with its DICOMweb plugin, PostgreSQL and Chromium (the status page test).
    missing=()
    command -v storescu >/dev/null || missing+=(dcmtk)
    command -v dciodvfy >/dev/null || missing+=(dicom3tools)
    command -v dcm2niix >/dev/null || missing+=(dcm2niix)
    { command -v Orthanc || [ -x /usr/sbin/Orthanc ]; } >/dev/null || missing+=(orthanc)
    [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)  # STOW-RS/QIDO-RS/WADO-RS peer
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
    command -v chromium >/dev/null || missing+=(chromium)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi

PY=${PYTHON:-}
if [ -z "$PY" ]; then
    for cand in python3.11 python3.12 python3; do
        if command -v "$cand" >/dev/null; then PY=$cand; break; fi
    done
fi
[ -n "$PY" ] || { log "no python3 found"; exit 1; }

if [ ! -x .venv/bin/python ]; then
    log "creating .venv with $($PY --version)"
    "$PY" -m venv .venv || {
        log "python venv module missing; installing python3-venv"
        as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
        "$PY" -m venv .venv
    }
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

# Torch first, pinned.  On a CUDA host set DICOMNODE_TORCH to another spec if wanted.
TORCH_SPEC=${DICOMNODE_TORCH:-torch==2.13.0}
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    log "installing $TORCH_SPEC"
    "${PIP[@]}" install "$TORCH_SPEC"
fi
TORCH_VERSION=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])")
echo "torch==$TORCH_VERSION" > .venv/torch-constraint.txt

EXTRAS=""
[ "$TEST_TOOLS" = 1 ] && EXTRAS="[test]"
stamp=".venv/.installed$EXTRAS"
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
    log "installing dicomnode$EXTRAS (editable)"
    "${PIP[@]}" install -c .venv/torch-constraint.txt -e ".$EXTRAS"
    touch "$stamp"
fi
if [ "$TEST_TOOLS" = 1 ] && ! .venv/bin/python -c "import importlib.util as u; assert u.find_spec('totalsegmentator') and u.find_spec('dicom2nifti')" >/dev/null 2>&1; then
    # TotalSegmentator's package: its table of standard segment codes (ai/standard_codes.py reads it as data)
    # and its Python API, which runs installed TotalSegmentator tasks (ai/totalseg_runner.py). Without the
    # dependencies of its reports and previews (dipy, fury, xvfbwrapper ...), which the node does not use:
    # what its task runner imports beyond ours is dicom2nifti.
    log "installing TotalSegmentator 2.18.0 (--no-deps) and dicom2nifti"
    "${PIP[@]}" install --no-deps "TotalSegmentator==2.18.0"
    "${PIP[@]}" install -c .venv/torch-constraint.txt "dicom2nifti==2.6.2"
fi
log "ready: $(.venv/bin/dicomnode --version)"
