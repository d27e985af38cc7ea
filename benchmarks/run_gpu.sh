#!/usr/bin/env bash
# One prepared GPU session: install the carried wheels, then the checks and the benchmarks.
# Needs .whl/ (transformer-lens and the pure-Python packages the GPU image lacks) and
# .gpu_stubs/ (a stub of `datasets`, which TransformerLens imports but never uses here).
# Usage: bash benchmarks/run_gpu.sh [checks] [bench] [memory]   (default: all three)
set -uo pipefail
export PYTHONUNBUFFERED=1
what=${*:-checks bench memory}
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl 2>/dev/null || exit 1
export PYTHONPATH=/tmp/site:$PWD/.gpu_stubs:$PWD
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
quiet() { grep -v "Loading weights\|Writing"; }
if [[ $what == *checks* ]]; then
  python3 benchmarks/gpu_checks.py 2>&1 | quiet | tee "$OUT/gpu_checks.txt"
fi
if [[ $what == *bench* ]]; then
  python3 benchmarks/attribution_and_sweep.py --device cuda --repeats 5 2>&1 | quiet | tee "$OUT/bench_gpt2_cuda.txt"
  python3 benchmarks/attribution_and_sweep.py --device cuda --model smollm2 --batch 8 --repeats 5 2>&1 | quiet | tee "$OUT/bench_smollm2_cuda.txt"
  python3 benchmarks/captioning.py --device cuda --repeats 5 2>&1 | quiet | tee "$OUT/captioning_smollm2_cuda.txt"
  python3 benchmarks/captioning.py --device cuda --model gpt2-small --repeats 5 2>&1 | quiet | tee "$OUT/captioning_gpt2_cuda.txt"
fi
if [[ $what == *memory* ]]; then  # GPT-J-6B-shaped, all 28 layers, bf16: the real size (~2 min)
  python3 benchmarks/memory.py --device cuda --dtype bfloat16 --layers 28 --repeats 1 2>&1 | quiet | tee "$OUT/memory_gptj_cuda.txt"
fi
