#!/usr/bin/env bash
# Calibrate the mini-SUPERB scale: three upstreams x several seeds on a generated corpus, then the table of
# means, seed spreads and gaps (scripts/calibrate_mini.sh --help).
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/calibrate_mini.sh [--root DIR] [--preset NAME] [--corpus-seed N] [--tasks LIST]
                                 [--seeds LIST] [--rows LIST] [--er-folds LIST] [--jobs N]
                                 [--set [TASK:]KEY=VALUE ...] [--distil-steps N]

Runs the mini scale (`--scale mini`) of each task for three upstreams and several seeds, two runs at a time:
  fbank      s3prl's weight-free fbank_no_cmvn, a known-good feature
  random     a random-init tiny LightHuBERT (make-checkpoint --tiny, seed 0)
  distilled  the same architecture distilled from fbank by `train stage1` (configs/train/stage1_mini.yaml)
             on the corpus's unlabelled train-clean-100 audio
then prints each row's mean and standard deviation over the seeds and the gaps fbank-random and
distilled-random (python -m lighthubert_s3prl.superb.calibration).

  --root DIR        where everything goes (default calibration/mini): corpus/, checkpoints/, distil/,
                    exp/<row>/seed<N>/ (batch-runner roots), logs/, results/
  --preset NAME     corpus preset (default mini; mini-heldout checks a corpus the scale was not tuned on)
  --corpus-seed N   corpus seed (default 0)
  --tasks LIST      default ks,ic,er
  --seeds LIST      downstream seeds (default 1,2,3)
  --rows LIST       default fbank,random,distilled
  --er-folds LIST   ER folds per seed (default 1: one fold keeps a seed to minutes; SUPERB's score uses 5)
  --jobs N          runs at once (default 2, one per core with one thread each)
  --set ...         a config override for every run (run_superb.sh --set), e.g. runner.total_steps=500 to
                    measure the noise of a reduced size (repeatable)
  --distil-steps N  distillation steps (default: configs/train/stage1_mini.yaml's)

Re-running resumes: the corpus, the checkpoints and the distillation are kept, and finished units skipped.
USAGE
}

ROOT_DIR="calibration/mini"
PRESET="mini"
CORPUS_SEED=0
TASKS="ks,ic,er"
SEEDS="1,2,3"
ROWS="fbank,random,distilled"
ER_FOLDS="1"
JOBS=2
SETS=()
DISTIL_STEPS=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --root) ROOT_DIR="$2"; shift 2 ;;
    --preset) PRESET="$2"; shift 2 ;;
    --corpus-seed) CORPUS_SEED="$2"; shift 2 ;;
    --tasks) TASKS="$2"; shift 2 ;;
    --seeds) SEEDS="$2"; shift 2 ;;
    --rows) ROWS="$2"; shift 2 ;;
    --er-folds) ER_FOLDS="$2"; shift 2 ;;
    --jobs) JOBS="$2"; shift 2 ;;
    --set) SETS+=(--set "$2"); shift 2 ;;
    --distil-steps) DISTIL_STEPS="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "calibrate_mini.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/install.sh" >/dev/null
CLI="$REPO/.venv/bin/lighthubert-s3prl"
PY="$REPO/.venv/bin/python"
mkdir -p "$ROOT_DIR"
ROOT_DIR="$(cd "$ROOT_DIR" && pwd)"
mkdir -p "$ROOT_DIR/logs" "$ROOT_DIR/checkpoints"
export LIGHTHUBERT_S3PRL_OFFLINE=1

echo "[calibrate] corpus ($PRESET, seed $CORPUS_SEED): $ROOT_DIR/corpus"
"$CLI" make-corpus "$ROOT_DIR/corpus" --preset "$PRESET" --seed "$CORPUS_SEED" --tasks "$TASKS,asr" -q

for row in ${ROWS//,/ }; do
  case "$row" in
    fbank) ;;
    random)
      [[ -f "$ROOT_DIR/checkpoints/tiny_random.pt" ]] ||
        "$CLI" make-checkpoint --tiny --seed 0 "$ROOT_DIR/checkpoints/tiny_random.pt" ;;
    distilled)
      if [[ ! -f "$ROOT_DIR/checkpoints/tiny_distilled.pt" ]]; then
        echo "[calibrate] distilling the tiny model from fbank (log: $ROOT_DIR/logs/distil.log)"
        "$CLI" train stage1 "$REPO/configs/train/stage1_mini.yaml" \
          -o "data.train=$ROOT_DIR/corpus/LibriSpeech/train-clean-100" -o "train.output_dir=$ROOT_DIR/distil" \
          -o train.progress=false ${DISTIL_STEPS:+-o train.steps=$DISTIL_STEPS} > "$ROOT_DIR/logs/distil.log" 2>&1
        cp "$ROOT_DIR/distil/model.pt" "$ROOT_DIR/checkpoints/tiny_distilled.pt.tmp"
        mv "$ROOT_DIR/checkpoints/tiny_distilled.pt.tmp" "$ROOT_DIR/checkpoints/tiny_distilled.pt"
      fi ;;
    *) echo "calibrate_mini.sh: unknown row $row (use fbank, random, distilled)" >&2; exit 2 ;;
  esac
done

upstream_args() {
  case "$1" in
    fbank) echo "-u fbank_no_cmvn" ;;
    random) echo "-u lighthubert_local -k $ROOT_DIR/checkpoints/tiny_random.pt" ;;
    distilled) echo "-u lighthubert_local -k $ROOT_DIR/checkpoints/tiny_distilled.pt" ;;
  esac
}

jobs_file="$ROOT_DIR/logs/jobs.txt"
: > "$jobs_file"
for seed in ${SEEDS//,/ }; do
  for row in ${ROWS//,/ }; do
    echo "$row $seed" >> "$jobs_file"
  done
done
echo "[calibrate] $(wc -l < "$jobs_file") runs ($ROWS x seeds $SEEDS on $TASKS), $JOBS at a time"
SET_ARGS="${SETS[*]:-}"
export ROOT_DIR TASKS ER_FOLDS REPO SET_ARGS
export -f upstream_args
status=0
xargs -P "$JOBS" -L 1 bash -c '
  row=$0 seed=$1
  # shellcheck disable=SC2046
  if bash "$REPO/scripts/run_superb.sh" $(upstream_args "$row") --tasks "$TASKS" --data "$ROOT_DIR/corpus" \
      --scale mini --er-folds "$ER_FOLDS" --seed "$seed" --threads 1 $SET_ARGS \
      --exp-root "$ROOT_DIR/exp/$row/seed$seed" -q > "$ROOT_DIR/logs/$row.seed$seed.log" 2>&1; then
    echo "[calibrate] $row seed $seed: done"
  else
    echo "[calibrate] $row seed $seed: FAILED (see $ROOT_DIR/logs/$row.seed$seed.log)"; exit 1
  fi' < "$jobs_file" || status=$?

"$PY" -m lighthubert_s3prl.superb.calibration "$ROOT_DIR/exp" -o "$ROOT_DIR/results"
echo "[calibrate] results: $ROOT_DIR/results/calibration.md (runs: $ROOT_DIR/exp, logs: $ROOT_DIR/logs)"
exit "$status"
