# Superseded by scripts/stop23/h1.sh and h2.sh, which apply the patch to stop 22's own tree
# (.carry/stop22.tar): it no longer applies to the current tree, and .carry/base.tar is gone.
# Stop 22 h3 (prepared, not run: no machine was lent after h2): the step's residual add and
# RMSNorm in the i8 GEMV's last block (NormAfter, scripts/stop22/norm_in_last_block.patch).
# 8B Q4_K_M tg128, rounds interleaved on one machine: stop 21's tree (.carry/base.tar), the
# shipped tree, and the shipped tree with the patch (/tmp/norm); each on its own H100 tables
# (on another GPU too). Then the greedy tokens, the GPU tests of the patched tree (with the
# shipped table, and with none: then the Q6_K products take the i8 kernel's default, with the
# norm in it), the top two logits where stop 21's greedy tokens and the i8 Q6_K tree's part
# (h2: step 12), and the profile. Ordered so that a cut run keeps what matters most. Carry
# .whl and .carry (synth, base.tar, h2: h2's greedy tokens).
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/h3_gpu.txt
grep -q H100 $OUT/h3_gpu.txt || BW=4800
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null
rm -rf /tmp/base /tmp/norm && mkdir -p /tmp/base /tmp/norm && tar -x -C /tmp/base -f .carry/base.tar
cp -r engine kernels impdiff benchmarks tests reports pyproject.toml /tmp/norm/
(cd /tmp/norm && patch -p1 -s < reports/gpu-h100-fast-path/scripts/stop22/norm_in_last_block.patch) && echo "norm tree patched" | tee -a $OUT/h3_bench.txt
BENCH="bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth ${BW:-3350}"
tree() { local d=$1; shift; (cd $d && source benchmarks/device_env.sh && IMPDIFF_MMA_TABLE=$d/kernels/tuning/NVIDIA_H100_80GB_HBM3.mma.json IMPDIFF_GEMV_TABLE=$d/kernels/tuning/NVIDIA_H100_80GB_HBM3.json "$@"); }
for round in 1 2; do
  [ $round = 1 ] && tree /tmp/base impdiff $BENCH 2>&1 | grep -E "tg128|rror" | sed "s/^/stop21 /" | tee -a $OUT/h3_bench.txt
  tree $PWD impdiff $BENCH 2>&1 | grep -E "tg128|rror" | sed "s/^/shipped (norm kernel) /" | tee -a $OUT/h3_bench.txt
  tree /tmp/norm impdiff $BENCH 2>&1 | grep -E "tg128|rror" | sed "s/^/norm in the gemv /" | tee -a $OUT/h3_bench.txt
done
G=$PWD/reports/gpu-h100-fast-path/scripts/stop18/greedy.py
M=$PWD/reports/gpu-h100-fast-path/scripts/stop22/margin.py
# stop 21's tokens and the norm kernel's (h2's, the same seeded model): .carry/h2
cp .carry/h2/h2_greedy_base.json $OUT/h3_greedy_base.json
tree /tmp/norm timeout 60 python $G /tmp/l8q4.gguf $OUT/h3_greedy_new.json > /dev/null 2>&1
{ cmp -s .carry/h2/h2_greedy_i8.json $OUT/h3_greedy_new.json && echo "greedy new: identical to h2's norm-kernel tokens" || echo "greedy new: differs from h2's norm-kernel tokens"
  cmp -s $OUT/h3_greedy_base.json $OUT/h3_greedy_new.json && echo "greedy new: identical to stop 21's" || echo "greedy new: differs from stop 21's"; } | tee $OUT/h3_greedy.txt
export IMPDIFF_SYNTHETIC_DIR=$PWD/.carry/synth
tree /tmp/norm timeout 90 python -m pytest -q -p no:cacheprovider tests/test_mma_gemv.py tests/test_kernels.py \
  -k "norm or without_a_table or dispatch or fast_model or greedy or dependent" --tb=short 2>&1 | tail -8 | tee $OUT/h3_tests.txt
for t in /tmp/base /tmp/norm; do tree $t timeout 40 python $M /tmp/l8q4.gguf $OUT/h3_greedy_base.json 12 2>&1 | tail -1 | sed "s|^|$t: |" | tee -a $OUT/h3_margin.txt; done
echo '{}' > /tmp/empty.json
(cd /tmp/norm && source benchmarks/device_env.sh && IMPDIFF_MMA_TABLE=/tmp/empty.json timeout 50 python -m pytest -q -p no:cacheprovider tests/test_kernels.py \
  -k "fast_model or greedy or dependent" --tb=short) 2>&1 | tail -4 | sed "s/^/no table: /" | tee -a $OUT/h3_tests.txt
tree /tmp/norm timeout 100 python benchmarks/profile_decode.py /tmp/l8q4.gguf --graph 2>&1 | grep -v Warn | head -18 | tee $OUT/h3_profile.txt
