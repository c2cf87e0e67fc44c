# Sourced by the GPU scripts (gpu_check.sh, gpu_profile.sh) from the repository root: creates
# $OUT, installs the wheels in .whl/ (packages the machine lacks, e.g. ott-jax, jaxopt, POT) into
# /tmp/site, and puts them and the repository on PYTHONPATH.
mkdir -p "$OUT"
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
