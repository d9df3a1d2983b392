# Stop 23 h1 (prepared, not run: no machine was lent in stop 23). Two opt-in changes on the
# GPU for the first time: the deferred norm (IMPDIFF_DEFERRED_NORM=1: the residual add and the
# next RMSNorm inside the i8 GEMVs around it, no norm kernel between) and parallel branches
# (IMPDIFF_CONCURRENT_PROJECTIONS=1: a Q4_K_M layer's V beside its Q+K). In order, so that a
# cut run keeps what matters most: their GPU tests; then 8B Q4_K_M tg128 off, deferred, and
# deferred + branches, rounds interleaved, and once stop 22's NormAfter patch (the norm in the
# GEMV's last block) on stop 22's tree. Each tree on its own H100 tables (on another GPU too).
# Carry .whl and .carry (synth: the test models; stop22.tar: stop 22's tree, 2283cbb).
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/h1_gpu.txt
grep -q H100 $OUT/h1_gpu.txt || BW=4800
export IMPDIFF_SYNTHETIC_DIR=$PWD/.carry/synth
tree() { local d=$1; shift; (cd $d && source benchmarks/device_env.sh && IMPDIFF_MMA_TABLE=$d/kernels/tuning/NVIDIA_H100_80GB_HBM3.mma.json IMPDIFF_GEMV_TABLE=$d/kernels/tuning/NVIDIA_H100_80GB_HBM3.json "$@"); }
tree $PWD timeout 240 python -m pytest -q -p no:cacheprovider tests/test_mma_gemv.py tests/test_kernels.py \
  -k "(norm or unnormed or residual_add or deferred or parallel or dispatch or without_a_table or fast_model or greedy or dependent) and not compiles" \
  --tb=short 2>&1 | tail -15 | tee $OUT/h1_tests.txt
[ -f /tmp/l8q4.gguf ] || python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null
rm -rf /tmp/s22 && mkdir -p /tmp/s22 && tar -x -C /tmp/s22 -f .carry/stop22.tar
(cd /tmp/s22 && P=reports/gpu-h100-fast-path/scripts/stop22/norm_in_last_block.patch && { patch -p1 -s < $P || git apply $P; }) && echo "stop 22 tree + NormAfter patch" > $OUT/h1_bench.txt
BENCH="bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth ${BW:-3350}"
for round in 1 2; do
  tree $PWD impdiff $BENCH 2>&1 | grep -E "tg128|rror" | sed "s/^/norm kernel (off) /" | tee -a $OUT/h1_bench.txt
  IMPDIFF_DEFERRED_NORM=1 tree $PWD impdiff $BENCH 2>&1 | grep -E "tg128|rror" | sed "s/^/deferred norm /" | tee -a $OUT/h1_bench.txt
  IMPDIFF_DEFERRED_NORM=1 IMPDIFF_CONCURRENT_PROJECTIONS=1 tree $PWD impdiff $BENCH 2>&1 | grep -E "tg128|rror" | sed "s/^/deferred norm + branches /" | tee -a $OUT/h1_bench.txt
  [ $round = 1 ] && tree /tmp/s22 impdiff $BENCH 2>&1 | grep -E "tg128|rror" | sed "s/^/NormAfter (s22 patch) /" | tee -a $OUT/h1_bench.txt
done
