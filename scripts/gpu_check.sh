#!/usr/bin/env bash
# Runtime checks and benchmarks on a CUDA machine (not part of CI: CI has no GPU).
# Usage: scripts/gpu_check.sh [OUT_DIR] [runtime|service|all]. Needs torch with CUDA, pandas, safetensors,
# huggingface_hub, tqdm, einops, pytest; the reference wheel (kronos-model-arch) in .whl/ if
# it is not installed.
set -uo pipefail
out=${1:-build/gpu}
stage=${2:-all}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/env.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$out/env.txt"
echo "== runtime tests on cuda (ours and the reference both on the GPU)"
KRONOS_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider tests/test_runtime_parity.py \
  tests/test_runtime_sampling.py tests/test_runtime_inputs.py tests/test_engine.py \
  tests/test_engine_static_steps.py 2>&1 | tee "$out/tests.txt" | tail -8
if [ "$stage" != service ]; then
echo "== bench_runtime on cuda"
python3 scripts/bench_runtime.py --device cuda --shape small --lookback 400 --horizon 120 \
  --paths 1 8 --batch 32 128 --modes ${GPU_BENCH_MODES:-exact:float32:eager exact approximate:float32:eager approximate approximate:bfloat16 approximate:float16 exact:bfloat16 exact:float16} \
  2>&1 | grep -v "^Loading" | tee "$out/bench.txt"
fi
if [ "$stage" != runtime ]; then
  echo "== load test sweep of the service on cuda (needs bentoml: carry its wheels in .whl/)"
  python3 scripts/load_test.py --sweep --device cuda --dev-shape small --sliding exact \
    --concurrency 1 16 32 64 --shapes 64x16 400x120 400x120x8 --duration 6 --drain 30 \
    --direct 5 --out "$out/load" 2>&1 | tee "$out/load.log" | grep -v '^{' | tail -40
fi
