#!/usr/bin/env bash
# Ship onnxruntime-gpu to a GPU machine that has no package registry, 64 MiB per call (the `device` tool of this
# workplace), then run benchmarks/gpu_check.sh there.
#
#   bash benchmarks/gpu_ship.sh prepare   # here: fetch, trim, compress and split the wheel; park the package's ONNX
#   ... the device calls below, back to back (a warm machine keeps ignored files for 30 s after each call) ...
#   bash benchmarks/gpu_ship.sh restore   # here: put the package's ONNX back
#
# The onnxruntime-gpu 1.31.1 wheel (CUDA 13 / cuDNN 9) is 256 MB; without its TensorRT provider and compressed with
# xz it is about 193 MiB, sent as four parts of under 50 MiB (the working tree travels with each, so the package's
# ONNX file is parked in .gpuparts/model while the parts travel, and carried to the last call). The peers of the
# benchmark (optimum-onnx and the transformers it needs) travel as wheels in .whl on the last call.
#
# Device calls (`run`), each within 30 s of the last one's end:
#   k = 1..4: command "mkdir -p /root/ortparts && mv .gpuparts/p$k/* /root/ortparts/ && ls -l /root/ortparts",
#             carry [".gpuparts/p$k"], timeout_s 60
#   last:     command "ORT_PARTS=/root/ortparts bash benchmarks/gpu_check.sh", carry [".gpuparts/model", ".whl"],
#             timeout_s 540 (results under $OUT)
set -euo pipefail
cd "$(dirname "$0")/.."
ORT=onnxruntime-gpu==1.31.1
PART_MIB=${PART_MIB:-49}
CACHE=${CACHE:-$HOME/.cache/trajsafe-gpu}
PY=${PYTHON:-python3}
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
PEERS=(transformers==4.57.6 huggingface_hub==0.36.2 tokenizers==0.22.2 optimum==2.1.0 optimum-onnx==0.1.0)

prepare() {
  mkdir -p "$CACHE" .whl .gpuparts
  $PY -m pip download -q --no-deps "${PLATFORM[@]}" -d "$CACHE" "$ORT"
  $PY -m pip download -q --no-deps "${PLATFORM[@]}" -d .whl "${PEERS[@]}"
  if [ ! -f "$CACHE/ort-site.tar.xz" ]; then
    rm -rf "$CACHE/site" && mkdir "$CACHE/site"
    (cd "$CACHE/site" && unzip -q "$CACHE"/onnxruntime_gpu-1.31.1-*.whl \
      && rm onnxruntime/capi/libonnxruntime_providers_tensorrt.so)
    tar -C "$CACHE/site" -cf - . | xz -9e -T2 >"$CACHE/ort-site.tar.xz.tmp"
    mv "$CACHE/ort-site.tar.xz.tmp" "$CACHE/ort-site.tar.xz"
  fi
  rm -rf .gpuparts/p* .gpuparts/split
  mkdir -p .gpuparts/split
  split -b "${PART_MIB}M" -d -a 2 "$CACHE/ort-site.tar.xz" .gpuparts/split/ort-site.tar.xz.
  k=0
  for part in .gpuparts/split/*; do
    k=$((k + 1)); mkdir -p ".gpuparts/p$k"; mv "$part" ".gpuparts/p$k/"
  done
  rmdir .gpuparts/split
  (cd "$CACHE" && sha256sum ort-site.tar.xz) >.gpuparts/p1/ort-site.sha256
  mkdir -p .gpuparts/model
  for f in models/default/*.onnx; do
    [ -e "$f" ] && mv "$f" .gpuparts/model/
  done
  echo "prepared $k parts in .gpuparts/p1..p$k; the package's ONNX is parked in .gpuparts/model"
  echo "afterwards: bash benchmarks/gpu_ship.sh restore"
  du -sh .gpuparts/* .whl
}

restore() {
  for f in .gpuparts/model/*.onnx; do
    [ -e "$f" ] && mv "$f" models/default/
  done
  git status --short models/
  echo "restored"
}

case "${1:-}" in
  prepare) prepare ;;
  restore) restore ;;
  *) echo "usage: bash benchmarks/gpu_ship.sh prepare|restore" >&2; exit 2 ;;
esac
