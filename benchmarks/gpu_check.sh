#!/bin/bash
# GPU check, run by hand on a machine with an accelerator and JAX installed for it:
#   OUT=/some/dir bash benchmarks/gpu_check.sh
# Runs the full toy experiment (the paper's setting) and the metric, SAE and toy-model tests on
# the accelerator; writes env.txt, toy_stdout.txt, toy_stderr.txt, toy_results.json and tests.txt
# to $OUT. Packages missing there (ott-jax, jaxopt, POT) can be put as wheels in .whl/.
set -u
OUT=${OUT:-runs/gpu_check}
source benchmarks/gpu_env.sh  # $OUT, the wheels of .whl/, PYTHONPATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
python3 -c "import jax, ott; print('jax', jax.__version__, jax.devices(), 'ott', ott.__version__)" \
  2>&1 | tee -a "$OUT/env.txt"
start=$(date +%s.%N)
python3 -m experiments.toy_models --out /tmp/toy > "$OUT/toy_stdout.txt" \
  2> >(tr '\r' '\n' | grep -v "it/s\]\|s/it\]" > "$OUT/toy_stderr.txt")
status=$?
echo "toy_models exit $status wall $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s" \
  | tee -a "$OUT/env.txt"
cp /tmp/toy/results.json "$OUT/toy_results.json" 2>/dev/null
timeout 330 python3 -m pytest -q -p no:cacheprovider tests/test_regression.py \
  tests/test_matching.py tests/test_folds.py tests/test_sae.py tests/test_toy.py \
  > "$OUT/tests.txt" 2>&1
echo "pytest exit $?" | tee -a "$OUT/env.txt"
tail -40 "$OUT/tests.txt"
