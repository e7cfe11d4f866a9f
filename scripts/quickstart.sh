#!/usr/bin/env bash
# Install (if needed) and run the main job on its built-in default: no downloads beyond the install.
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  cat <<'USAGE'
usage: scripts/quickstart.sh [WORKDIR]

Installs .venv (scripts/install.sh), then runs `lighthubert-s3prl quickstart WORKDIR`
(default WORKDIR: ./quickstart): a seeded LightHuBERT checkpoint in the official format, a subnet,
the synthetic mini-SUPERB corpus, short s3prl runs of several tasks, and the printed results table.
Re-running resumes: finished steps are skipped.
USAGE
  exit 0
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/install.sh"
WORKDIR="${1:-quickstart}"
exec "$ROOT/.venv/bin/lighthubert-s3prl" quickstart "$WORKDIR"
