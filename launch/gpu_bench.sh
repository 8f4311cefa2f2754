#!/usr/bin/env bash
# One prepared accelerator benchmark (issue 14): run from the repo root on a fresh H100/H200 box.
#   bash launch/gpu_bench.sh            # ~7.5 min: BC LLaMA-1B MFU, ILQL GPT-2-medium MFU,
#                                       # LLaMA-7B-shaped shared-base ILQL LoRA step (tok/s, peak mem)
#   bash launch/gpu_bench.sh --dry-run  # tiny shapes on any backend (what the CPU test runs)
# Prints one JSON object; also writes $OUT/gpu_bench.json when $OUT is set. Each part runs in its
# own time-boxed subprocess (fairjax/benchmarks/gpu_bench.py): one failing still prints the others.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DRY=0
for a in "$@"; do [ "$a" = "--dry-run" ] && DRY=1; done
START=$(date +%s)

if [ "$DRY" = 0 ]; then
  # jax with CUDA present? Otherwise install the pinned requirements + CUDA jax (quiet, bounded).
  if ! $PY -c "import jax, sys; sys.exit(0 if jax.default_backend() == 'gpu' else 1)" >/dev/null 2>&1; then
    echo "[gpu_bench] jax has no GPU backend: installing requirements + jax[cuda12]==0.10.2" >&2
    timeout 150 $PY -m pip install -q --disable-pip-version-check --timeout 10 --retries 0 -r requirements.txt \
      "jax[cuda12]==0.10.2" >/tmp/gpu_bench_pip.log 2>&1 \
      || echo "[gpu_bench] pip install failed or timed out (see /tmp/gpu_bench_pip.log); continuing" >&2
  fi
  $PY -c "import jax; print('[gpu_bench] backend', jax.default_backend(), jax.devices()[0].device_kind)" >&2 \
    || echo "[gpu_bench] jax import failed" >&2
fi

# Whatever the install took comes off the 7-minute budget (10 s kept for the JSON).
SPENT=$(( $(date +%s) - START ))
BUDGET=$(( 440 - SPENT ))
[ "$BUDGET" -lt 60 ] && BUDGET=60
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # measured peaks, not the preallocated pool
exec $PY -m fairjax.benchmarks.gpu_bench --budget "$BUDGET" "$@"
