#!/usr/bin/env bash
# The GPU check of the diffusion plugins, for a session lent a device machine (CUDA). It runs the diffusion
# tests with CUDA as the compute device (model management picks it by itself), the upstream-parity workflows
# on the GPU, and the GPU half of the diffusion benchmark (it/s of full-size SD1.5 at 512x512 and SDXL at
# 1024x1024). The device machine's python3 already holds torch, numpy, safetensors, scipy, pillow, pluggy,
# PyYAML, psutil, regex and tqdm but cannot reach PyPI, so the rest travels as wheels in .whl/ (ignored by git):
#
#   mkdir -p .whl && cd .whl
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d . \
#       configargparse stevedore pbr ftfy wcwidth torchsde trampoline
#   pip wheel --no-deps -w . openai-clip==1.0.1      # an sdist on PyPI: built here, pure Python
#   cd .. && pip wheel --no-deps -w .whl ./kernel ./plugins/core_nodes ./plugins/samplers   # this checkout
#
# then run it there with .whl carried:  bash benchmarks/gpu_check.sh   (logs land in $OUT, else ./gpu_check_out).
# Parity tests compare with CPU references, so on CUDA (PyTorch attention, other kernels) they may miss their
# bit-exact latent bounds while the images stay within 40 dB: read pytest.log for which assertion failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check_out}"
mkdir -p "$out"
site=/tmp/comfyui-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || exit 1
export PYTHONPATH="$site" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$out/gpu.txt"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/diffusion \
    --ignore=tests/diffusion/test_upstream_parity.py --ignore=tests/diffusion/test_upscale.py 2>&1 \
    | tee "$out/pytest.log" | tail -n 40
COMFYUI_UPSTREAM_PARITY=all timeout 240 python3 -m pytest -q -p no:cacheprovider \
    tests/diffusion/test_upstream_parity.py 2>&1 | tee "$out/upstream_parity.log" | tail -n 30
timeout 180 python3 benchmarks/diffusion_bench.py --skip-tiny 2>&1 | tee "$out/bench.log"
