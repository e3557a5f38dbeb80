#!/usr/bin/env bash
# The inference core's GPU checks as one short run on a CUDA machine: where each node of the shipped package runs,
# the `gpu` tests (tests/test_gpu.py) and the CUDA benchmark. Results go to $OUT (default ./gpu-check): gpu.txt,
# info.json, placement.log, gpu-tests.log, bench-cuda.md/.json/.err (and bench-cuda-full.* if time is left).
#
# Needs python3 with numpy, tokenizers, onnx, pytest and hypothesis, and onnxruntime-gpu built for the machine's CUDA.
# Without network: $ORT_PARTS names a folder of the parts made by `benchmarks/gpu_ship.sh prepare` (the trimmed
# onnxruntime-gpu, unpacked into /tmp/site), and wheels in $WHEELS (default .whl) are installed into /tmp/site too,
# ahead of the image's packages (never plain onnxruntime beside onnxruntime-gpu in one environment).
# Usage: bash benchmarks/gpu_check.sh   (about 6 minutes; $BUDGET_S, default 400, bounds the optional full bench)
set -uo pipefail
OUT=${OUT:-gpu-check}
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
BUDGET_S=${BUDGET_S:-400}
mkdir -p "$OUT" /tmp/site
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
if [ -n "${ORT_PARTS:-}" ]; then
  (cd "$ORT_PARTS" && cat ort-site.tar.xz.* | sha256sum | sed 's/-$/ort-site.tar.xz/' | diff - ort-site.sha256) \
    || { echo "ORT parts do not match their checksum" | tee "$OUT/ort.err"; exit 1; }
  cat "$ORT_PARTS"/ort-site.tar.xz.* | $PY -c \
    "import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp/site')" || exit 1
fi
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
fi
for f in .gpuparts/model/*.onnx; do  # the package's ONNX, parked there while the parts travelled
  [ -e "$f" ] && cp "$f" models/default/
done
# The CUDA provider's libraries (cuBLAS, cuDNN, cuFFT, cuRAND, the runtime) from the image's nvidia pip packages.
NV=$($PY -c "import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))" 2>/dev/null)
if [ -n "$NV" ]; then
  LIBS=$(find "$NV/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
  export LD_LIBRARY_PATH=${LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
$PY -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/install.log" 2>&1 \
  || echo "editable install failed (see install.log): running from the checkout"
export PYTHONUNBUFFERED=1 TRAJSAFE_REQUIRE_CUDA=1  # the gpu tests fail, not skip, without CUDA
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/gpu.txt" 2>&1
$PY -c "import onnxruntime as o; print(o.__version__, o.__file__, o.get_available_providers())" >>"$OUT/gpu.txt" 2>&1
$PY -m trajsafe_sdk.cli info --json >"$OUT/info.json" 2>&1
# Where ONNX Runtime places each node of the graph CUDA runs for the shipped package (verbose session log).
timeout 120 $PY - >"$OUT/placement.log" 2>&1 <<'EOF'
import onnxruntime as ort
from trajsafe_sdk.package import MonitorPackage
from trajsafe_sdk.runtime import runtime_graph
pkg = MonitorPackage.load()
source, activations = runtime_graph(pkg, pkg.default_variant("cuda"), "cuda")
print("the graph CUDA runs: activations", activations, flush=True)
opts = ort.SessionOptions()
opts.log_severity_level = 0
ort.InferenceSession(source if isinstance(source, bytes) else str(source), sess_options=opts,
                     providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
EOF
grep -A30 "Node placements" "$OUT/placement.log" | cut -c60- | head -60 >"$OUT/placement.txt"
timeout 200 $PY -m pytest -q -m gpu -rs tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$OUT/gpu-tests.log"
tests=${PIPESTATUS[0]}
peers=()
$PY -c "import optimum.onnxruntime, torch" 2>/dev/null || peers=(--no-peers)
# Latency at turns 1, 8, 32; throughput over up to 1,024 concurrent conversations; memory; op profile.
timeout 240 $PY -m trajsafe_sdk.cli bench --provider cuda --markdown --quick --turns 1,8,32 \
  --concurrency 1,16,256,1024 --max-batch 64 --profile "${peers[@]}" -o "$OUT/bench-cuda.json" \
  >"$OUT/bench-cuda.md" 2>"$OUT/bench-cuda.err"
bench=$?
left=$((BUDGET_S - SECONDS))
if [ "$left" -gt 90 ]; then  # the full plan (more repetitions, lengths 16/64/256), only if time is left
  timeout "$left" $PY -m trajsafe_sdk.cli bench --provider cuda --markdown --no-pool "${peers[@]}" \
    -o "$OUT/bench-cuda-full.json" >"$OUT/bench-cuda-full.md" 2>"$OUT/bench-cuda-full.err"
fi
echo "gpu tests exit $tests, bench exit $bench; results in $OUT (${SECONDS} s)"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
