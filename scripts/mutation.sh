#!/usr/bin/env bash
# Mutation testing of the pure-logic modules with mutmut: plants small bugs (a flipped comparison, an
# off-by-one constant, a dropped call) one at a time and checks that the fast tests catch each one.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/mutation.sh [--max-children N] [--fresh] [PATTERN ...]

Mutates the modules listed under [mutmut] only_mutate in setup.cfg (subnet configs and budget search,
collect, package, the SUPERB score, the runner's state logic, task configs, distillation losses, subnet
search) and runs the fast tests listed there against every mutant. PATTERN limits the run to mutants
whose names match (mutmut's names: MODULE.x_FUNCTION__mutmut_N, e.g. "lighthubert_s3prl.model.config.*").

  --max-children N   parallel mutant runs (default: the CPUs available)
  --fresh            forget earlier results (mutants/ is otherwise reused: an interrupted run resumes
                     and functions changed since are re-tested)

Results: mutants/ (mutmut's cache; `.venv/bin/mutmut browse` to inspect, `mutmut show NAME` for a diff)
and mutants/summary.txt (killed / survived per module, the score, every survivor). Not part of CI: a full
run takes hours on 2 cores. docs/testing.md lists the survivors of the last full run and why each lives.
USAGE
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MAX_CHILDREN=""
FRESH=0
PATTERNS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --max-children) MAX_CHILDREN="$2"; shift 2 ;;
    --fresh) FRESH=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "mutation.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) PATTERNS+=("$1"); shift ;;
  esac
done

bash "$ROOT/scripts/install.sh"
cd "$ROOT"
MUTMUT_VERSION=3.8.1
if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('mutmut') != '$MUTMUT_VERSION')" 2>/dev/null; then
  echo "[mutation] pip install mutmut==$MUTMUT_VERSION into .venv"
  .venv/bin/python -m pip install -q "mutmut==$MUTMUT_VERSION" 2> >(grep -v '^WARNING: Location' >&2)
fi
[[ $FRESH == 1 ]] && rm -rf mutants

export LIGHTHUBERT_S3PRL_OFFLINE=1
args=(run)
[[ -n "$MAX_CHILDREN" ]] && args+=(--max-children "$MAX_CHILDREN")
status=0
.venv/bin/mutmut "${args[@]}" "${PATTERNS[@]}" || status=$?
.venv/bin/python "$ROOT/scripts/mutation_summary.py" "${PATTERNS[@]}" > mutants/summary.txt.tmp
mv mutants/summary.txt.tmp mutants/summary.txt
cat mutants/summary.txt
echo "[mutation] results: $ROOT/mutants/summary.txt (mutmut cache: $ROOT/mutants)"
exit "$status"
