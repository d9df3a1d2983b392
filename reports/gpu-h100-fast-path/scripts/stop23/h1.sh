# Stop 23 h1 (prepared, not run: no machine was lent in stop 23). The opt-in fusions
# (IMPDIFF_FUSIONS, kernels/launch.py) on the GPU for the first time: "branches" (a Q4_K_M
# layer's V GEMV beside its Q+K one, parallel branches of the graph) and "rope" (the QKV
# GEMV's epilogue rotates Q and K and writes the KV cache: no RoPE kernel). In order, so that a
# cut run keeps what matters most: their GPU tests; then 8B Q4_K_M tg128 with none, branches,
# rope and all, interleaved, and stop 22's NormAfter patch (the norm in the GEMV's last block)
# on stop 22's tree; h2 runs round 2. Each tree on its own H100 tables (on another GPU too).
# Carry .whl and .carry (synth: the test models; stop22.tar: stop 22's tree, 2283cbb).
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/h1_gpu.txt
grep -q H100 $OUT/h1_gpu.txt || BW=4800
export IMPDIFF_SYNTHETIC_DIR=$PWD/.carry/synth
tree() { local d=$1; shift; (cd $d && source benchmarks/device_env.sh && IMPDIFF_MMA_TABLE=$d/kernels/tuning/NVIDIA_H100_80GB_HBM3.mma.json IMPDIFF_GEMV_TABLE=$d/kernels/tuning/NVIDIA_H100_80GB_HBM3.json "$@"); }
tree $PWD timeout 240 python -m pytest -q -p no:cacheprovider tests/test_mma_gemv.py tests/test_kernels.py \
  -k "(rope or parallel or fused_steps or fusions or dispatch or without_a_table or fast_model or greedy or dependent) and not compiles" \
  --tb=short 2>&1 | tail -15 | tee $OUT/h1_tests.txt
[ -f /tmp/l8q4.gguf ] || python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null
rm -rf /tmp/s22 && mkdir -p /tmp/s22 && tar -x -C /tmp/s22 -f .carry/stop22.tar
(cd /tmp/s22 && P=reports/gpu-h100-fast-path/scripts/stop22/norm_in_last_block.patch && { patch -p1 -s < $P || git apply $P; }) && echo "stop 22 tree + NormAfter patch" > $OUT/h1_bench.txt
BENCH="bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth ${BW:-3350}"
for f in "" branches rope all; do
  IMPDIFF_FUSIONS=$f tree $PWD impdiff $BENCH 2>&1 | grep -E "tg128|rror" | sed "s/^/fusions ${f:-none} /" | tee -a $OUT/h1_bench.txt
done
tree /tmp/s22 impdiff $BENCH 2>&1 | grep -E "tg128|rror" | sed "s/^/NormAfter (s22 patch) /" | tee -a $OUT/h1_bench.txt
