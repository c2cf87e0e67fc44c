#!/bin/bash
# Where the toy experiment and the full seed sweep spend their time on an accelerator, run by
# hand on a machine with JAX installed for it:
#   OUT=/some/dir DEADLINE=560 bash benchmarks/gpu_profile.sh
# 1. the toy experiment, the paper's setting, cold (empty compilation cache), profiled by
#    benchmarks.profile_run (stages, compile seconds, every metric call);
# 2. the full default seed sweep (`python -m experiments.seed_sweep`: 6 sizes x 5 k x 16 pairs),
#    profiled the same way, stopped with SIGINT at DEADLINE seconds after the script started (the
#    profile of the sizes it finished is still written).
# Writes env.txt, toy.txt, toy_profile.json, sweep.txt, sweep_profile.json and
# sweep_results.json (when the sweep finished) to $OUT. Packages missing there (ott-jax, jaxopt)
# can be put as wheels in .whl/.
set -u
start=$(date +%s)
OUT=${OUT:-runs/gpu_profile}
DEADLINE=${DEADLINE:-560}
TOY_ARGS=${TOY_ARGS:-}      # e.g. "--config tiny" to try the script out
SWEEP_ARGS=${SWEEP_ARGS:-}
source benchmarks/gpu_env.sh  # $OUT, the wheels of .whl/, PYTHONPATH
export SUPERALIGN_CACHE=/tmp/superalign_jax_cache
rm -rf "$SUPERALIGN_CACHE"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  nproc
  python3 -c "import jax, flax, optax, orbax.checkpoint, ott; \
print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'ott', ott.__version__)"
} > "$OUT/env.txt" 2>&1 || { cat "$OUT/env.txt"; exit 1; }
cat "$OUT/env.txt"
elapsed() { echo $(( $(date +%s) - start )); }

t=$(date +%s.%N)
timeout -s INT -k 15 240 python3 -m benchmarks.profile_run toy_models --out /tmp/toy \
  --no-progress $TOY_ARGS > "$OUT/toy.txt" 2>&1
echo "toy_models exit $? wall $(python3 -c "print(round($(date +%s.%N) - $t, 1))") s" \
  | tee -a "$OUT/env.txt"
cp /tmp/toy/profile.json "$OUT/toy_profile.json" 2>/dev/null
grep -A40 "^status" "$OUT/toy.txt" | head -60

left=$(( DEADLINE - $(elapsed) ))
echo "sweep: $left s left" | tee -a "$OUT/env.txt"
(( left > 0 )) || exit 0  # (timeout 0 would mean no limit at all)
t=$(date +%s.%N)
timeout -s INT -k 15 "$left" python3 -m benchmarks.profile_run seed_sweep --out /tmp/sweep \
  --no-progress $SWEEP_ARGS > "$OUT/sweep.txt" 2>&1
echo "seed_sweep exit $? wall $(python3 -c "print(round($(date +%s.%N) - $t, 1))") s" \
  | tee -a "$OUT/env.txt"
cp /tmp/sweep/profile.json "$OUT/sweep_profile.json" 2>/dev/null
cp /tmp/sweep/results.json "$OUT/sweep_results.json" 2>/dev/null
grep "N=.*: [0-9.]* s$" "$OUT/sweep.txt"
grep -A12 "^status" "$OUT/sweep.txt"
