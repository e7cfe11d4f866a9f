#!/usr/bin/env bash
# Install (if needed) and run the whole test suite, then the numerics tests again under a forced CPU
# kernel dispatch, so that a tolerance which holds only on this CPU's kernels cannot pass.
set -euo pipefail
usage() {
  cat <<'USAGE'
usage: scripts/test.sh [pytest args...]      (installs .venv first via scripts/install.sh)

Without arguments: the whole suite on this CPU's own kernels, then the float32/bf16 agreement tests
(pytest -m numerics) again with PyTorch's kernel dispatch forced to another capability:
  AVX-512 CPU -> avx2 (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2)
  otherwise   -> default (ATEN_CPU_CAPABILITY=default, ONEDNN_MAX_CPU_ISA=SSE41, MKL_ENABLE_INSTRUCTIONS=SSE4_2)
With arguments: only pytest with those arguments, once.

Environment: LIGHTHUBERT_TEST_CAPABILITY=auto (default) | avx2 | default | none (skip the second pass).
USAGE
}
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then usage; exit 0; fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# the suite tests every door, the optional exports included
bash "$ROOT/scripts/install.sh" --extras test,hf,onnx,slurm
cd "$ROOT"
export LIGHTHUBERT_S3PRL_OFFLINE=1
PY="$ROOT/.venv/bin/python"
PYTEST=("$PY" -m pytest -q -p no:cacheprovider)

if [[ $# -gt 0 ]]; then
  exec "${PYTEST[@]}" "$@"
fi

"${PYTEST[@]}" --durations=15 tests

capability="${LIGHTHUBERT_TEST_CAPABILITY:-auto}"
if [[ "$capability" == "auto" ]]; then
  native="$("$PY" -c 'import torch; print(torch.backends.cpu.get_cpu_capability())')"
  case "$native" in
    AVX512*) capability=avx2 ;;
    *) capability=default ;;
  esac
fi
case "$capability" in
  none) echo "[test] forced-capability pass skipped (LIGHTHUBERT_TEST_CAPABILITY=none)"; exit 0 ;;
  avx2) onednn=AVX2; mkl=AVX2 ;;
  default) onednn=SSE41; mkl=SSE4_2 ;;
  *) echo "test.sh: LIGHTHUBERT_TEST_CAPABILITY=$capability; use auto, avx2, default or none" >&2; exit 2 ;;
esac
echo "[test] numerics tests again with ATEN_CPU_CAPABILITY=$capability ONEDNN_MAX_CPU_ISA=$onednn MKL_ENABLE_INSTRUCTIONS=$mkl"
ATEN_CPU_CAPABILITY="$capability" ONEDNN_MAX_CPU_ISA="$onednn" MKL_ENABLE_INSTRUCTIONS="$mkl" \
  "${PYTEST[@]}" -m numerics tests
