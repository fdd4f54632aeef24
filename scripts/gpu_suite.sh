#!/usr/bin/env bash
# The whole test suite and two experiments under a GPU machine's own jax (0.11.x there; CPU CI has 0.10.2):
#
#   bash scripts/gpu_suite.sh [OUT_DIR]          # default results/gpu_suite; about 5 minutes on an H100 machine
#
# 1. pytest on that jax's CPU backend (JAX_PLATFORMS=cpu), warnings as errors as in CI: does the pinned range's
#    newest jax pass the suite?
# 2. pytest on the GPU backend at the same time (DeprecationWarnings ignored): which checks, written on CPUs,
#    also hold on the GPU?
# 3. the main job (experiments.crossover) and experiments.train --preset tiny on the GPU.
# Offline: gfloat and its two pure-Python needs travel as wheels in .whl/ (see the device README; name `.whl` in
# the run's carry). tests/test_notebooks.py is left out (no nbclient there); the MiniLM tests skip themselves
# (its 88 MB wheel does not travel). Logs land in OUT_DIR; the summary lines go to stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-results/gpu_suite}")"
mkdir -p "$out"
py="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
"$py" -c 'import jax; print("jax", jax.__version__, jax.devices())'

common=(-v -rfE --tb=short -p no:cacheprovider -p no:benchmark --ignore=tests/test_notebooks.py --timeout=300)
summary() { grep -E " (FAILED|ERROR) tests/|^(FAILED|ERROR) |[0-9]+ (passed|failed)|INTERNALERROR" "$1" | sort -u | head -"${2:-60}"; }

JAX_PLATFORMS=cpu timeout -k 10 240 "$py" -m pytest tests -n 6 "${common[@]}" >"$out/suite_cpu.log" 2>&1 &
cpu_pid=$!
timeout -k 10 300 "$py" -m pytest tests -n 4 "${common[@]}" -W ignore::DeprecationWarning \
  >"$out/suite_gpu.log" 2>&1 &
gpu_pid=$!

t0=$SECONDS
timeout -k 10 90 "$py" -m experiments.crossover --out "$out/crossover" >"$out/crossover.log" 2>&1
echo "== crossover on the GPU: exit $? after $((SECONDS - t0)) s" && tail -22 "$out/crossover.log"
t0=$SECONDS
timeout -k 10 90 "$py" -m experiments.train --preset tiny --out "$out/train" >"$out/train.log" 2>&1
echo "== train --preset tiny on the GPU: exit $? after $((SECONDS - t0)) s" && tail -8 "$out/train.log"

wait "$cpu_pid"
echo "== suite, jax CPU backend: exit $?" && summary "$out/suite_cpu.log"
wait "$gpu_pid"
echo "== suite, GPU backend: exit $?" && summary "$out/suite_gpu.log" 80
