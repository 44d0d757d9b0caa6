#!/usr/bin/env bash
# Everything gradlab checks and measures on an accelerator, in one run of bounded length:
# accelerator_check.py, README's main job, the test suite on the accelerator, and the
# step-cost, sweep and solver benchmarks. Uses the python3 on PATH, which must have JAX's accelerator
# build, optax, flax, chex, pytest and pytest-xdist; gradlab is taken from this checkout.
# Writes one log per step (and the main job's plot) under $OUT (default ./accelerator_out)
# and prints each log's end. Usage: bash benchmarks/accelerator_run.sh [steps...]
# (steps: check main tests step_cost sweep solvers kernels; default all but kernels).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-accelerator_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg PYTHONUNBUFFERED=1
export PYTHONDONTWRITEBYTECODE=1

run_step() {  # name, seconds, command...
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  tail -n "${TAIL:-25}" "$OUT/$name.log"
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
}

STEPS=" $* "
[ $# -eq 0 ] && STEPS=" check main tests step_cost sweep solvers "

if [[ $STEPS == *" check "* ]]; then
  python3 -c "import jax, optax, flax; print('jax', jax.__version__, 'optax', optax.__version__,
'flax', flax.__version__, jax.devices())"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  run_step check 120 python3 benchmarks/accelerator_check.py
fi
if [[ $STEPS == *" main "* ]]; then
  run_step main 60 python3 -m gradlab sweep --out "$OUT/sweep_out"
  cp "$OUT/sweep_out/sweep.png" "$OUT/sweep.png" 2>/dev/null && rm -rf "$OUT/sweep_out"
fi
if [[ $STEPS == *" tests "* ]]; then
  # The suite on the accelerator (conftest.py defaults JAX to the CPU only when unset).
  JAX_PLATFORMS=${ACCEL_PLATFORMS:-cuda,cpu} XLA_PYTHON_CLIENT_PREALLOCATE=false \
    TAIL=60 run_step tests "${TESTS_LIMIT:-200}" python3 -m pytest -n "${TEST_WORKERS:-12}" -q \
    -p no:cacheprovider -rf
fi
if [[ $STEPS == *" step_cost "* ]]; then
  run_step step_cost 60 python3 benchmarks/step_cost.py --markdown
fi
if [[ $STEPS == *" sweep "* ]]; then
  TAIL=40 run_step sweep "${SWEEP_LIMIT:-150}" python3 benchmarks/sweep.py --reps 3
fi
if [[ $STEPS == *" solvers "* ]]; then
  # Rosenbrock-2 and -10 beside the other libraries as their users get them, then with
  # gradlab's compiler options given to every library, then gradlab without them.
  for extra in "" --same-xla-options --no-gradlab-options; do
    TAIL=40 run_step "solvers${extra}" "${SOLVERS_LIMIT:-120}" python3 benchmarks/solvers.py \
      --quick --repeats 3 $extra
  done
fi
if [[ $STEPS == *" kernels "* ]]; then
  # The sweep's and the optax loop's compiled step loops, counted and written out.
  run_step kernels 90 python3 benchmarks/sweep.py --quick --kernels --dump-hlo "$OUT" \
    --no-strategy-table
fi
