# Stop 23 h1 (prepared, not run: no machine was lent in stop 23). The opt-in fusions
# (IMPDIFF_FUSIONS, kernels/launch.py) on the GPU for the first time: "norm" (the residual add
# and the next RMSNorm inside the i8 GEMVs around it, no norm kernel between), "branches" (a
# Q4_K_M layer's V beside its Q+K), "rope" (Q, K rotated and the cache written by the QKV
# GEMV). In order, so that a cut run keeps what matters most: their GPU tests; then 8B Q4_K_M
# tg128 with none, norm, norm + branches and all, interleaved, and stop 22's
# NormAfter patch (the norm in the GEMV's last block) on stop 22's tree; h2 runs round 2.
# Each tree on its own H100 tables (on another GPU too).
# Carry .whl and .carry (synth: the test models; stop22.tar: stop 22's tree, 2283cbb).
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/h1_gpu.txt
grep -q H100 $OUT/h1_gpu.txt || BW=4800
export IMPDIFF_SYNTHETIC_DIR=$PWD/.carry/synth
tree() { local d=$1; shift; (cd $d && source benchmarks/device_env.sh && IMPDIFF_MMA_TABLE=$d/kernels/tuning/NVIDIA_H100_80GB_HBM3.mma.json IMPDIFF_GEMV_TABLE=$d/kernels/tuning/NVIDIA_H100_80GB_HBM3.json "$@"); }
tree $PWD timeout 240 python -m pytest -q -p no:cacheprovider tests/test_mma_gemv.py tests/test_kernels.py \
  -k "(norm or unnormed or residual_add or deferred or parallel or rope or fusions or dispatch or without_a_table or fast_model or greedy or dependent) and not compiles" \
  --tb=short 2>&1 | tail -15 | tee $OUT/h1_tests.txt
[ -f /tmp/l8q4.gguf ] || python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null
rm -rf /tmp/s22 && mkdir -p /tmp/s22 && tar -x -C /tmp/s22 -f .carry/stop22.tar
(cd /tmp/s22 && P=reports/gpu-h100-fast-path/scripts/stop22/norm_in_last_block.patch && { patch -p1 -s < $P || git apply $P; }) && echo "stop 22 tree + NormAfter patch" > $OUT/h1_bench.txt
BENCH="bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth ${BW:-3350}"
tree $PWD impdiff $BENCH 2>&1 | grep -E "tg128|rror" | sed "s/^/no fusions /" | tee -a $OUT/h1_bench.txt
for f in norm norm,branches all; do
  IMPDIFF_FUSIONS=$f tree $PWD impdiff $BENCH 2>&1 | grep -E "tg128|rror" | sed "s/^/fusions $f /" | tee -a $OUT/h1_bench.txt
done
tree /tmp/s22 impdiff $BENCH 2>&1 | grep -E "tg128|rror" | sed "s/^/NormAfter (s22 patch) /" | tee -a $OUT/h1_bench.txt
