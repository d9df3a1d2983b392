# Stop 22 h3: the norm in the i8 GEMV's last block (NormAfter). 8B Q4_K_M tg128, rounds
# interleaved on one machine: stop 21's tree (.carry/base.tar), this stop's tree with the norm
# kernel as before (.carry/head.tar with qgemv_residual_norm's fused branch switched off by
# one sed), and as it ships; each tree on its own H100 tables (on another GPU too). Then the
# greedy tokens of each, the GPU tests of the new paths (the synthetic models' fast path with
# the shipped table and with none: then the Q6_K products take the i8 kernel's default, with
# the norm in it), the top two logits where stop 21's greedy tokens and this stop's part (h2:
# step 12), and the profile. Ordered so that a cut run keeps what matters most.
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/h3_gpu.txt
grep -q H100 $OUT/h3_gpu.txt || BW=4800
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null
rm -rf /tmp/base /tmp/nonorm && mkdir -p /tmp/base /tmp/nonorm && tar -x -C /tmp/base -f .carry/base.tar && tar -x -C /tmp/nonorm -f .carry/head.tar
sed -i 's/    if mma and mma_gemv.takes_norm(/    if False and mma_gemv.takes_norm(/' /tmp/nonorm/kernels/quant_matmul.py
grep -c "if False and" /tmp/nonorm/kernels/quant_matmul.py | sed "s/^/nonorm patched: /" | tee -a $OUT/h3_bench.txt
BENCH="bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth ${BW:-3350}"
tree() { local d=$1; shift; (cd $d && source benchmarks/device_env.sh && IMPDIFF_MMA_TABLE=$d/kernels/tuning/NVIDIA_H100_80GB_HBM3.mma.json IMPDIFF_GEMV_TABLE=$d/kernels/tuning/NVIDIA_H100_80GB_HBM3.json "$@"); }
for round in 1 2; do
  [ $round = 1 ] && tree /tmp/base impdiff $BENCH 2>&1 | grep -E "tg128|rror" | sed "s/^/stop21 /" | tee -a $OUT/h3_bench.txt
  tree /tmp/nonorm impdiff $BENCH 2>&1 | grep -E "tg128|rror" | sed "s/^/q6k-i8 norm-kernel /" | tee -a $OUT/h3_bench.txt
  tree $PWD impdiff $BENCH 2>&1 | grep -E "tg128|rror" | sed "s/^/q6k-i8 norm-in-gemv /" | tee -a $OUT/h3_bench.txt
done
G=$PWD/reports/gpu-h100-fast-path/scripts/stop18/greedy.py
M=$PWD/reports/gpu-h100-fast-path/scripts/stop22/margin.py
# stop 21's tokens and the norm kernel's (h2's, the same seeded model): .carry/h2
cp .carry/h2/h2_greedy_base.json $OUT/h3_greedy_base.json
tree $PWD timeout 60 python $G /tmp/l8q4.gguf $OUT/h3_greedy_new.json > /dev/null 2>&1
{ cmp -s .carry/h2/h2_greedy_i8.json $OUT/h3_greedy_new.json && echo "greedy new: identical to h2's norm-kernel tokens" || echo "greedy new: differs from h2's norm-kernel tokens"
  cmp -s $OUT/h3_greedy_base.json $OUT/h3_greedy_new.json && echo "greedy new: identical to stop 21's" || echo "greedy new: differs from stop 21's"; } | tee $OUT/h3_greedy.txt
export IMPDIFF_SYNTHETIC_DIR=$PWD/.carry/synth
tree $PWD timeout 90 python -m pytest -q -p no:cacheprovider tests/test_mma_gemv.py tests/test_kernels.py \
  -k "norm or without_a_table or dispatch or fast_model or greedy or dependent" --tb=short 2>&1 | tail -8 | tee $OUT/h3_tests.txt
for t in /tmp/base $PWD; do tree $t timeout 40 python $M /tmp/l8q4.gguf $OUT/h3_greedy_base.json 12 2>&1 | tail -1 | sed "s|^|$t: |" | tee -a $OUT/h3_margin.txt; done
echo '{}' > /tmp/empty.json
IMPDIFF_MMA_TABLE=/tmp/empty.json timeout 50 python -m pytest -q -p no:cacheprovider tests/test_kernels.py \
  -k "fast_model or greedy or dependent" --tb=short 2>&1 | tail -4 | sed "s/^/no table: /" | tee -a $OUT/h3_tests.txt
tree $PWD timeout 100 python benchmarks/profile_decode.py /tmp/l8q4.gguf --graph 2>&1 | grep -v Warn | head -18 | tee $OUT/h3_profile.txt
