#!/usr/bin/env bash
# One GPU session in one command: the GPU tests, then the GPU kernels benchmark.
#
#   bash benchmarks/gpu_session.sh            # tests + benchmarks/gpu_kernels.py --quick
#   FULL=1 bash benchmarks/gpu_session.sh     # tests + the whole sweep (about 10 minutes on an H100)
#
# Needs python3 with torch (CUDA) and triton; installs eaglefinch itself without fetching anything.
# fla's chunk_rwkv6 joins the benchmark where `fla` imports (pip install fla-core; on a machine
# with no network, carry its wheel). Logs and results go to $OUT when set (a device run), else to
# benchmarks/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/gpu_install.log" 2>&1 \
    || export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu_device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu_device.txt"
# compiled kernels against the float64 reference, the model and decoder paths, CUDA dispatch
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/ops/test_wkv_triton.py tests/ops/test_wkv_triton_gpu.py \
    tests/generation/test_decode_model.py 2>&1 | tee "$out/gpu_tests.log"
tests_status=${PIPESTATUS[0]}
sweep=(--quick)
[ -n "${FULL:-}" ] && sweep=()
python3 benchmarks/gpu_kernels.py "${sweep[@]}" 2>&1 | tee "$out/gpu_kernels.log"
if [ "$out" != benchmarks/results ]; then
    cp benchmarks/results/gpu_kernels.json benchmarks/results/gpu_kernels.png "$out/" 2>/dev/null
fi
exit "$tests_status"
