#!/usr/bin/env bash
# Install (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  echo "usage: scripts/test.sh [pytest args...]   (installs .venv first via scripts/install.sh)"
  exit 0
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/install.sh"
cd "$ROOT"
export LIGHTHUBERT_S3PRL_OFFLINE=1
exec "$ROOT/.venv/bin/python" -m pytest -q -p no:cacheprovider --durations=15 tests "$@"
