#!/usr/bin/env bash
# The inference core's GPU checks as one short run on a CUDA machine: the `gpu` tests (tests/test_gpu.py) and the
# CUDA benchmark. Results go to $OUT (default ./gpu-check): gpu.txt, info.json, gpu-tests.log, bench-cuda.md/.json.
#
# Needs python3 with numpy, tokenizers, onnx, pytest and hypothesis, and onnxruntime-gpu built for the machine's CUDA.
# Without network, put wheels in $WHEELS (default .whl): they are installed into /tmp/site first, ahead of the
# image's packages (never plain onnxruntime beside onnxruntime-gpu in one environment).
# Usage: bash benchmarks/gpu_check.sh            (about 5 minutes; BENCH=quick for under 2)
set -uo pipefail
OUT=${OUT:-gpu-check}
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
mkdir -p "$OUT"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
$PY -m pip install -q --no-deps --no-build-isolation --no-index -e . || exit 1
export PYTHONUNBUFFERED=1 TRAJSAFE_REQUIRE_CUDA=1  # the gpu tests fail, not skip, without CUDA
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/gpu.txt" 2>&1
$PY -m trajsafe_sdk.cli info --json >"$OUT/info.json" 2>&1
$PY -m pytest -q -m gpu -rs tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$OUT/gpu-tests.log"
tests=${PIPESTATUS[0]}
peers=()
$PY -c "import optimum.onnxruntime, torch" 2>/dev/null || peers=(--no-peers)
quick=()
[ "${BENCH:-full}" = quick ] && quick=(--quick)
$PY -m trajsafe_sdk.cli bench --provider cuda --markdown "${quick[@]}" "${peers[@]}" -o "$OUT/bench-cuda.json" \
  >"$OUT/bench-cuda.md" 2>"$OUT/bench-cuda.err"
bench=$?
echo "gpu tests exit $tests, bench exit $bench; results in $OUT"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
