#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md in one go (about 10 minutes on one H100).
# Usage, from the pack root: bash benchmarks/gpu_check.sh [output folder]
set -euo pipefail
out="$(realpath -m "${1:-benchmarks/gpu_results}")"
mkdir -p "$out"
cd "$(dirname "$0")"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -m pytest -q ../tests/test_speed_offload.py 2>&1 | tail -3 | tee "$out/offload_tests.txt"
# Branch policies and every installed attention backend, 11B, 256px, 129 frames, bf16.
python step_time.py --preset 11b-256px --device cuda --steps 10 --repeats 1 --attention all \
    --json "$out/step_11b_256px_bf16.json" | tee "$out/step_11b_256px_bf16.txt"
# fp8 weights (peak memory: does it fit 24 GB?) and bf16 with 30 streamed blocks.
python step_time.py --preset 11b-256px --device cuda --steps 10 --repeats 1 --policies fast \
    --weight-dtypes fp8_e4m3fn --json "$out/step_11b_256px_fp8.json" | tee "$out/step_11b_256px_fp8.txt"
python step_time.py --preset 11b-256px --device cuda --steps 10 --repeats 1 --policies fast \
    --offload-blocks 30 --json "$out/step_11b_256px_offload30.json" | tee "$out/step_11b_256px_offload30.txt"
# Shortened 768px run: reference vs fast.
python step_time.py --preset 11b-768px-short --device cuda --steps 4 --repeats 1 --policies reference,fast \
    --json "$out/step_11b_768px.json" | tee "$out/step_11b_768px.txt"
# Optional: torch.compile of the blocks (first step compiles for a few minutes).
python step_time.py --preset 11b-256px --device cuda --steps 10 --repeats 1 --policies fast --compile \
    --json "$out/step_11b_256px_compile.json" | tee "$out/step_11b_256px_compile.txt" || true
# HunyuanVideo VAE decode at 768px 16:9, 129 frames (latent 33x96x168), released widths, bf16: time and peak
# with the reference's spatial tiles and with its temporal tiles too.
python vae_decode_memory.py --real --device cuda --dtype bf16 --latent 1 16 33 96 168 --tilings s256 s256t64 \
    | tee "$out/vae_decode_768px.txt"
python load_memory.py --preset wide-3gb --device cuda --json "$out/load_cuda.json" | tee "$out/load_cuda.txt"
