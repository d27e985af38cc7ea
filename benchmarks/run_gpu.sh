#!/usr/bin/env bash
# One prepared GPU session: install the carried wheels, then the checks and the benchmarks, on
# both APIs (HookedTransformer from TL 3.9, TransformerBridge from TL 4.3), everything appended
# to $OUT/gpu_all.txt as it finishes (each step has its own time limit).
# On a machine where the package is installed (pip install -e ".[dev]") it runs as is; set
# APIS=bridge under TransformerLens 4.x. On the lent GPU machine (bare image, no network) it
# first installs .whl/ (transformer-lens 4.3 and the pure-Python packages the image lacks) and
# .whl/tl3/ (transformer-lens 3.9 alone), with .gpu_stubs/ (a stub of `datasets`, which
# TransformerLens imports but never uses here); both folders are git-ignored, carried by hand.
#
#   bash benchmarks/run_gpu.sh [memory] [bench] [caption] [checks]   (default: all four)
#   bash benchmarks/run_gpu.sh attr-quick checks                      (a short re-check)
#   bash benchmarks/run_gpu.sh paper    (the paper's run sized: GPT-J-6B + BEiT-L and
#                                        LLaVA-1.5-7B shapes, bf16, batch 1-16, images/s, peak
#                                        memory, hours for 1,000 / 5,000 COCO images)
#
# Dry run on CPU with tiny models (checks that the script itself works):
#   DEVICE=cpu PY=/path/to/venv/bin/python SIZES=tiny MEMSHAPE=tiny MEMLAYERS=2 OUT=/tmp/o \
#     bash benchmarks/run_gpu.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
what=${*:-memory bench caption checks}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
SIZES=${SIZES:-gpt2-small smollm2}
MEMSHAPE=${MEMSHAPE:-gptj}
MEMLAYERS=${MEMLAYERS:-28}
APIS=${APIS:-hooked bridge}
first=${APIS%% *}
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
log=$OUT/gpu_all.txt
base=$PWD
site3=""  # TL 3.9, installed beside 4.3 only from carried wheels
if [[ -d .whl ]]; then
  sites=$(mktemp -d)  # fresh each run: nothing left from an earlier one is picked up
  install() { "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$@"; }
  install "$sites/tl4" .whl/*.whl >/dev/null 2>&1 || { echo "installing .whl/ failed"; exit 1; }
  install "$sites/tl3" .whl/tl3/*.whl >/dev/null 2>&1 || { echo "installing .whl/tl3 failed"; exit 1; }
  base=$sites/tl4:$PWD/.gpu_stubs:$PWD
  site3=$sites/tl3
fi
quiet() { grep -v "Loading weights\|Writing\|it/s\]$"; }
path() { [[ $1 == hooked && -n $site3 ]] && echo "$site3:$base" || echo "$base"; }  # TL 3.9 first
# run API LIMIT SCRIPT ARGS...: one benchmark on one API
run() {
  local api=$1 limit=$2
  shift 2
  echo "== [$api] $*" | tee -a "$log"
  PYTHONPATH=$(path $api) timeout "$limit" "$PY" "$@" --api "$api" 2>&1 | quiet | tee -a "$log"
  echo "(exit ${PIPESTATUS[0]}, $SECONDS s since start)" | tee -a "$log"
}
for api in $APIS; do
  PYTHONPATH=$(path $api) "$PY" -c "from importlib.metadata import version as v
print('$api:', *(f'{n} {v(n)}' for n in ('torch', 'transformers', 'transformer_lens')))" \
    2>&1 | tail -1 | tee -a "$log"
done
[[ $DEVICE == cuda* ]] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$log"
if [[ $what == *memory* ]]; then  # GPT-J-6B-shaped, all 28 layers, bf16: the real size
  mem=(benchmarks/memory.py --device "$DEVICE" --dtype bfloat16 --layers $MEMLAYERS --repeats 1
    --shape "$MEMSHAPE")
  for api in $APIS; do
    run $api 120 "${mem[@]}" --batch 4
  done
  run $first 120 "${mem[@]}" --batch 16
fi
if [[ $what == *bench* ]]; then
  for size in $SIZES; do
    batch=$([[ $size == smollm2 ]] && echo 8 || echo 4)
    for api in $APIS; do
      run $api 90 benchmarks/attribution_and_sweep.py --device "$DEVICE" --model "$size" \
        --batch $batch --repeats 5 $([[ $size != gpt2-small ]] && echo --profile)
    done
  done
  for size in $SIZES; do  # bf16 at a batch that keeps the GPU busy
    run $first 90 benchmarks/attribution_and_sweep.py --device "$DEVICE" --model "$size" \
      --batch 32 --dtype bfloat16 --repeats 5 --skip-layer-loop
  done
fi
if [[ $what == *attr-quick* ]]; then  # the attribution ratios alone, first API (~2.5 minutes)
  att=(benchmarks/attribution_and_sweep.py --device "$DEVICE" --repeats 5)
  run $first 60 "${att[@]}" --model "${SIZES%% *}" --batch 4
  run $first 60 "${att[@]}" --model "${SIZES##* }" --batch 8 --skip-layer-loop --profile
  run $first 60 "${att[@]}" --model "${SIZES##* }" --batch 32 --dtype bfloat16 --skip-layer-loop
fi
if [[ $what == *caption* ]]; then
  for size in $SIZES; do
    for api in $APIS; do
      run $api 60 benchmarks/captioning.py --device "$DEVICE" --model "$size" --repeats 5
    done
    if [[ $APIS == *hooked* ]]; then  # A/B: TL's eager attention and norms instead of fused
      run hooked 60 benchmarks/captioning.py --device "$DEVICE" --model "$size" --repeats 5 \
        --tl-attention --tl-norms
    fi
    if [[ $APIS == *bridge* ]]; then  # A/B: the bridge's own norms and attention
      run bridge 60 benchmarks/captioning.py --device "$DEVICE" --model "$size" --repeats 5 \
        --tl-bridge
    fi
  done
fi
if [[ $what == *paper* ]]; then  # the paper's per-image procedure, real shapes, random weights
  shape=$([[ $MEMSHAPE == tiny ]] && echo tiny || echo real)
  paper=(benchmarks/paper_run.py --device "$DEVICE" --shape "$shape"
    --dtype "$([[ $DEVICE == cuda* ]] && echo bfloat16 || echo float32)"
    --batches $([[ $shape == tiny ]] && echo 1 2 || echo 1 4 16))
  run $first 300 "${paper[@]}"                   # GPT-J-6B + BEiT-L (LiMBeR)
  run bridge 300 "${paper[@]}" --native llava    # LLaVA-1.5-7B
fi
if [[ $what == *checks* ]]; then
  echo "== gpu_checks" | tee -a "$log"
  PYTHONPATH=$base timeout 90 "$PY" benchmarks/gpu_checks.py "$DEVICE" 2>&1 | quiet | tee -a "$log"
fi
echo "done in $SECONDS s" | tee -a "$log"
