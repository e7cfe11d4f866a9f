#!/usr/bin/env bash
# Batch SUPERB runs for one upstream: any of the ten tasks, ER 5-fold loop, ASV checkpoint sweep, QbE layer
# sweep, SD's DER grid, test on the dev-best checkpoint, resumable. The logic lives in lighthubert_s3prl/superb/runner.py; this wrapper
# only finds the project's Python. Every s3prl run goes through lighthubert_s3prl.run_downstream.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
  PY="$ROOT/.venv/bin/python"
else
  PY="$(command -v python3 || true)"
fi

if [[ -z "$PY" ]] || ! "$PY" -c "import lighthubert_s3prl" >/dev/null 2>&1; then
  if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    echo "usage: scripts/run_superb.sh -u UPSTREAM [-k CKPT] [-g SUBNET] --tasks LIST --data ROOT [options]"
    echo "(install first with scripts/install.sh for the full option list)"
    exit 0
  fi
  echo "run_superb.sh: lighthubert_s3prl is not installed for ${PY:-python3}; run scripts/install.sh (or set PYTHON=)" >&2
  exit 2
fi

exec "$PY" -m lighthubert_s3prl.superb.runner "$@"
