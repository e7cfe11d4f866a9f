#!/usr/bin/env bash
# Mutation testing of the pure-logic modules with mutmut: plants small bugs (a flipped comparison, an
# off-by-one constant, a dropped call) one at a time and checks that the fast tests catch each one.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/mutation.sh [--max-children N] [--fresh] [--retest] [PATTERN ...]

Mutates the pure-logic code and runs the fast tests listed in setup.cfg ([mutmut]) against every mutant.
Without PATTERN the scope is the project's (see SCOPE below): subnet configs and the budget search, the
subnet search, the SUPERB score, distillation losses and targets, collect, package, the batch runner's
state logic and the corpus/metadata writers. PATTERN limits the run to mutants whose names match
(mutmut's names: MODULE.x_FUNCTION__mutmut_N, MODULE.xǁClassǁmethod__mutmut_N; e.g. "lighthubert_s3prl.model.config.*").

  --max-children N   parallel mutant runs (default: the CPUs available)
  --fresh            forget earlier results (mutants/ is otherwise reused: an interrupted run resumes
                     and functions changed since are re-tested)
  --retest           judge the missed mutants in scope again (after adding tests; mutmut keeps verdicts)

Results: mutants/ (mutmut's cache; `.venv/bin/mutmut browse` to inspect, `mutmut show NAME` for a diff)
and mutants/summary.txt (killed / survived per module, the score, every survivor). Not part of CI: a full
run takes hours on 2 cores. docs/testing.md lists the survivors of the last full run and why each lives.
USAGE
}

# The project's scope: whole modules where all of the code is logic, the named functions elsewhere.
SCOPE=(
  "lighthubert_s3prl.model.config.*"
  "lighthubert_s3prl.training.search.*"
  "lighthubert_s3prl.training.losses.*"
  "lighthubert_s3prl.superb.reference.*"
  "lighthubert_s3prl.superb.collect.*"
  "lighthubert_s3prl.superb.package.*"
  # the batch runner's state logic: what is on disk -> train, resume, test, re-test or skip
  "lighthubert_s3prl.superb.units.x_states_checkpoints__*"
  "lighthubert_s3prl.superb.units.x_pid_alive__*"
  "lighthubert_s3prl.superb.units.x_lock_owner__*"
  "lighthubert_s3prl.superb.units.x_unit_expdir__*"
  "lighthubert_s3prl.superb.units.x_make_units__*"
  "lighthubert_s3prl.superb.units.x_unit_is_done__*"
  "lighthubert_s3prl.superb.units.x_outcome_from_result__*"
  "lighthubert_s3prl.superb.runner.xǁSuperbRunnerǁplan__*"
  "lighthubert_s3prl.superb.runner.xǁSuperbRunnerǁrun__*"
  "lighthubert_s3prl.superb.executor.xǁUnitExecutorǁrun__*"
  "lighthubert_s3prl.superb.executor.xǁUnitExecutorǁtrain__*"
  "lighthubert_s3prl.superb.executor.xǁUnitExecutorǁtest_best__*"
  # corpus and metadata writers: trial lists, ER folds, bucket lengths, lexicons
  "lighthubert_s3prl.superb.corpus.x_make_trials__*"
  "lighthubert_s3prl.superb.metadata.x_write_iemocap_meta_data__*"
  "lighthubert_s3prl.superb.metadata.x_write_len_for_bucket__*"
  "lighthubert_s3prl.superb.metadata.x_write_lexicon__*"
  "lighthubert_s3prl.superb.tasks.x_count_trials__*"
  "lighthubert_s3prl.superb.tasks.x_check_trial_list__*"
)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MAX_CHILDREN=""
FRESH=0
RETEST=0
PATTERNS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --max-children) MAX_CHILDREN="$2"; shift 2 ;;
    --fresh) FRESH=1; shift ;;
    --retest) RETEST=1; shift ;;
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
[[ ${#PATTERNS[@]} == 0 ]] && PATTERNS=("${SCOPE[@]}")
if [[ $RETEST == 1 && -d mutants ]]; then
  .venv/bin/python "$ROOT/scripts/mutation_summary.py" --forget-missed "${PATTERNS[@]}"
fi

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
