#!/usr/bin/env bash
# Create .venv and install lighthubert-s3prl with everything its recipes need. Safe to re-run: a finished
# install is recorded in .venv/.installed and skipped while setup.py is unchanged.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/install.sh [--venv DIR] [--python PYTHON] [--extras LIST] [--force]

Installs into a virtual environment (default: .venv in the repository):
  - Debian packages libsox-dev (torchaudio's sox effects, used by the KS and ASV recipes) and zip
    (when running as root with apt-get; otherwise it checks and tells you what to install),
  - this package in editable mode with its pinned torch 2.8.0 / torchaudio 2.8.0 / s3prl 0.4.18 stack
    and the extras in LIST (default: test; test,hf,onnx,slurm adds what the transformers and ONNX exports and the SLURM
    executor need).
USAGE
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-}"
FORCE=0
EXTRAS="test"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv) VENV="$2"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    --extras) EXTRAS="$2"; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [[ -z "$PYTHON" ]]; then
  for candidate in python3.11 python3.12 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON="$candidate"; break; fi
  done
fi
"$PYTHON" - <<'PY' || { echo "install.sh: Python 3.10-3.12 is required (torch 2.8.0 wheels); pass --python" >&2; exit 2; }
import sys
sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)
PY

# system libraries: libsox for torchaudio.sox_effects, zip for submission archives
if ! ldconfig -p 2>/dev/null | grep -q 'libsox\.so' || ! command -v zip >/dev/null 2>&1; then
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    echo "[install] apt-get install libsox-dev zip"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq libsox-dev zip >/dev/null
  else
    echo "[install] warning: libsox.so or zip is missing; install them (Debian: sudo apt-get install libsox-dev zip)." >&2
    echo "[install]          The KS and ASV recipes and submission zips need them; everything else works." >&2
  fi
fi

# the stamp holds setup.py's hash and the extras installed with it: asking for fewer extras than an up-to-date
# install has is a no-op, asking for more installs the union (so a test run and a quickstart never undo each other)
STAMP="$VENV/.installed"
HASH="$(sha256sum < "$ROOT/setup.py" | cut -d' ' -f1)"
STAMP_HASH="" STAMP_EXTRAS=""
[[ -f "$STAMP" ]] && { read -r STAMP_HASH STAMP_EXTRAS < "$STAMP" || true; }
if [[ "$STAMP_HASH" == "$HASH" ]]; then
  missing=0
  for extra in ${EXTRAS//,/ }; do
    [[ ",$STAMP_EXTRAS," == *",$extra,"* ]] || missing=1
  done
  if [[ $FORCE == 0 && $missing == 0 ]]; then
    echo "[install] $VENV is up to date"
    exit 0
  fi
  EXTRAS="$(echo "$STAMP_EXTRAS,$EXTRAS" | tr ',' '\n' | sed '/^$/d' | sort -u | paste -sd, -)"
fi
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
# catalyst 22.4 (imported by s3prl's KS recipe) has metadata that pip >= 24.1 refuses to process
"$VENV/bin/python" -m pip install -q "pip>=23,<24.1" 2> >(grep -v '^WARNING: Location' >&2)
echo "[install] pip install -e '$ROOT[$EXTRAS]' into $VENV (torch 2.8.0 is a large download the first time)"
"$VENV/bin/python" -m pip install -q --progress-bar off -e "$ROOT[$EXTRAS]" 2> >(grep -v '^WARNING: Location' >&2)
echo "$HASH $EXTRAS" > "$STAMP"
echo "[install] done: $VENV ($("$VENV/bin/python" -c 'import torch, torchaudio, s3prl; print("torch", torch.__version__, "torchaudio", torchaudio.__version__)' 2>/dev/null))"
