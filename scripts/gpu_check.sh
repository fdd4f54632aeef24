#!/usr/bin/env bash
# The one command for a GPU machine (H100/H200, no network; docs/benchmarks.md records its output), under 5 minutes:
#
#   bash scripts/gpu_check.sh [OUT_DIR]          # default results/gpu_check
#
# 1. the GPU-marked kernel tests: Pallas kernels (Triton) bit-identical to the XLA-compiled reference on the
#    GPU, and the XLA reference on the GPU bit-identical to the CPU's;
# 2. python -m experiments.bench --preset gpu: Pallas, XLA and copy GB/s, 8192x8192 float32 and bfloat16;
#    then the NV and per-channel bfloat16 kernels with float32 division as div.rn.f32 and as rcp + FMAs
#    (LOWBIT_JAX_TRITON_DIV=rn / rcp, kernels.substitute.div_rcp_fma: same bits, is it faster?);
# 3. python -m experiments.tune_kernels --preset gpu: GB/s of each candidate tiling (are the defaults still best?);
# 4. python -m experiments.bench_train --preset gpu: six-operand training steps (d_model 1024, bf16 baseline) per
#    precision against the unquantized step (target <= 1.3x).
# Each step runs under `timeout`; the whole log lands in OUT_DIR/gpu_check.md, fenced and ready to paste into
# docs/benchmarks.md. Installs nothing: uses the checkout through PYTHONPATH=. and the machine's jax, numpy,
# ml_dtypes, flax and pytest (pytest-xdist and pytest-timeout are used when present).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-results/gpu_check}"
mkdir -p "$out"
log="$out/gpu_check.md"
py="${PYTHON:-python3}"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
: >"$log"

say() { echo "$*" | tee -a "$log"; }

step() { # step LIMIT_S TITLE CMD...: one time-limited, fenced step of the log
  local limit=$1 title=$2 t0=$SECONDS
  shift 2
  say "" && say "## $title" && say "" && say '```'
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]} # global: the caller may read it
  say '```'
  say "exit status $rc after $((SECONDS - t0)) s$([ "$rc" = 124 ] && echo ", stopped by the ${limit} s guard")"
}

rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && rev="$rev + uncommitted changes"
say "# gpu_check $(date -u +%Y-%m-%dT%H:%MZ), commit $rev"
step 40 "machine" bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; \
  $py -c 'import jax, sys; print(\"jax\", jax.__version__, jax.devices()); sys.exit(jax.default_backend() != \"gpu\")'"
if [ "$rc" != 0 ]; then
  say "no GPU visible to JAX: nothing to check"
  exit 1
fi

# --noconftest: tests/conftest.py needs gfloat and hypothesis; the kernel tests need neither. no:benchmark: the
# image's pytest-benchmark warns under xdist, and the project's filterwarnings=error turns that into a crash.
opts=(-m gpu -q -rfEs --noconftest -p no:cacheprovider -p no:benchmark -W ignore::DeprecationWarning -W ignore::FutureWarning)
"$py" -c 'import xdist' 2>/dev/null && opts+=(-n 4)
"$py" -c 'import pytest_timeout' 2>/dev/null && opts+=(--timeout=90)
step 120 "GPU tests: tests/kernels -m gpu" "$py" -m pytest tests/kernels "${opts[@]}"
step 110 "bench: Pallas (default backend) vs XLA vs copy" \
  "$py" -m experiments.bench --preset gpu --impls xla,pallas --out "$out/bench"
step 90 "bench: NV and per-channel bfloat16, division div.rn.f32 (rn) vs rcp + FMA corrections (rcp)" bash -c \
  "rc=0; for d in rn rcp; do echo \"LOWBIT_JAX_TRITON_DIV=\$d\"; LOWBIT_JAX_TRITON_DIV=\$d $py -m experiments.bench \
  --preset gpu --formats nvfp4,nvint4,fp8_channel,int8_channel --dtypes bfloat16 --impls pallas \
  --out '$out/bench_div_'\$d || rc=1; done; exit \$rc"
step 130 "tile sweep: Pallas kernel GB/s per tiling (experiments.tune_kernels)" \
  "$py" -m experiments.tune_kernels --preset gpu --out "$out/tune"
step 170 "training steps: none / mxint8 / mxfp8 / nvfp4 against the unquantized bf16 step (experiments.bench_train)" \
  "$py" -m experiments.bench_train --preset gpu --repeats 5 --out "$out/bench_train"
say "" && say "wrote $log (and bench JSON/CSV under $out)"
