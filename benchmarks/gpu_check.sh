#!/usr/bin/env bash
# The GPU checks, in two calls of a few minutes on a lent GPU machine (the `device` tool). That machine has
# PyTorch, transformers, safetensors, click and tqdm but not this package, and no internet: src/ goes on
# PYTHONPATH and Fashion-MNIST travels with the call. Once, here:
#   mkdir -p .devdata && cp -r /usr/share/datasets/fashion-mnist .devdata/ && echo /.devdata/ >> .git/info/exclude
# then: device run  command="bash benchmarks/gpu_check.sh 1 2 3 4 5"  carry=[".devdata"]  timeout_s=600 for steps 1-5, then
# command="bash benchmarks/gpu_check.sh 6 7 8 9": each half's limits sum to under 600 s (all but the method steps end
# well before theirs). `bash benchmarks/gpu_check.sh 3 5 8` runs those steps alone (a rerun after a fix).
# Seen on an H200 (2026-11-28): a machine starts in about 50 s; at limits of 60 and 90 s, steps 6 and 8 stopped with 3
# and 13 methods left (each ran), so their limits are now 110 and 170 s.
# It prints (and saves under $OUT) the zoo-vs-loop tables of both Fashion-MNIST tasks in every precision,
# and the whole default run at N = 100 from an empty cache.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1 UNLEARNKIT_CACHE=/tmp/unlearnkit-cache
export UNLEARNKIT_DATA=${UNLEARNKIT_DATA:-$PWD/.devdata/fashion-mnist}
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
STEPS=" ${*:-1 2 3 4 5 6 7 8 9} "  # step 10 (a profile) only when named; all nine need two calls
step() { local n=$1 t=$2; shift 2; [[ $STEPS == *" $n "* ]] || return 0; echo; echo "== $1" | tee -a "$OUT/gpu_check.txt"; shift
         timeout "$t" "$@" 2>&1 | grep --line-buffered -v '^train \|^predict' | stamp | tee -a "$OUT/gpu_check.txt"; }
stamp() { while IFS= read -r l; do printf '%(%T)T %s\n' -1 "$l"; done; }  # when each line came: where time goes
# 1. MLP zoo vs a per-model loop (target: >= 50x the loop at N >= 300), fp32 / tf32 / bf16
step 1 60 "fashion-mnist-mlp zoo" python3 benchmarks/zoo_throughput.py --device cuda --task fashion-mnist-mlp \
  --models 100,300 --epochs 1 --loop-models 1 --repeats 1
# 2. CNN: an arm of 300 fits (chunked by memory if needed) and runs faster per model than at N = 100
step 2 60 "fashion-mnist-cnn zoo" python3 benchmarks/zoo_throughput.py --device cuda --task fashion-mnist-cnn \
  --models 100,300 --epochs 1 --loop-models 1 --repeats 1 --precisions tf32,bf16
# 3. the same science on the GPU: CPU vs CUDA, one pass vs memory chunks, bf16 vs fp32
step 3 60 "consistency" python3 benchmarks/gpu_consistency.py --task fashion-mnist-mlp --models 16
# 4. the LM zoo against a per-model loop (tokens/s)
step 4 45 "tofu-synth-gpt LM zoo" python3 benchmarks/lm_throughput.py --device cuda --precision tf32 --models 128 \
  --steps 20 --repeats 1 --loop-models 2
# 5. the whole default run at N = 100 from an empty cache (target: <= 30 s)
step 5 70 "default run, N = 100" python3 benchmarks/run_wallclock.py --device cuda --models 100 --verbose
# 6. every LM method (tables indexed by batch positions live on the device; residual activations, generation
#    and the SAE and guard steering on it too) and the LM corrective study's ERA
step 6 110 "LM methods on the GPU" python3 -m unlearnkit run --task tofu-synth-tiny --forget authors:0.1 --models 2 \
  --device cuda --bootstrap 0 --no-cache --methods none,ga,graddiff,ga+kl,npo,simnpo,idk,idkdpo,altpo,undial,wga,satimp,ceu,pdu,llmu,rmu,flat,finetune,traced,era,era-control,sae-clamp,guard
# 7. memory on the device: a live reference model vs reference log-probs computed once (and full vs LoRA where
#    PEFT is installed)
step 7 90 "LM memory: reference, LoRA" python3 benchmarks/lm_memory.py --task tofu-synth-tiny --models 32 --device cuda \
  --precision tf32 --epochs 2 --lora 8
# 8. every classifier method on the device (measurements included: SSD's and Potion's importances, SalUn's
#    saliency through engine.accumulate, Newton's Hessians; 72 s for all of them on a 2-core CPU)
methods=""; [[ $STEPS == *" 8 "* ]] && methods=$(python3 -c 'from unlearnkit.methods import REGISTRY; print(",".join(m for m in REGISTRY if m != "newton"))')
step 8 170 "classifier methods on the GPU" bash -c "python3 -m unlearnkit run --task digits-mlp --forget class:3:0.5 \
  --models 2 --device cuda --bootstrap 0 --no-cache --methods $methods && python3 -m unlearnkit run \
  --task digits-logreg --models 2 --device cuda --bootstrap 0 --no-cache --methods none,newton"
# 9. what the optimizer update costs on the device, compiled or op by op (why a GPU updates op by op)
step 9 30 "optimizer update" python3 benchmarks/optimizer_update.py --device cuda --models 100,300
# 10. (named only) where the default run's seconds go: a profile of it (read here with pstats: the file comes back under $OUT)
step 10 90 "default run, N = 100, profiled" python3 -m cProfile -o "$OUT/default_run.prof" benchmarks/run_wallclock.py \
  --device cuda --models 100
nvidia-smi --query-gpu=memory.used --format=csv,noheader | tee -a "$OUT/gpu.txt"
