# Stop 21 h1: folded norms (the RMS norms inside the i8 GEMVs, the residual adds in the GEMVs
# before them) — their GPU tests first, then 8B Q4_K_M tg128 folded vs IMPDIFF_FOLD_NORMS=0
# (rounds interleaved), the greedy tokens of both, the folded step's profile.
# From the repository root, carrying .whl (the gguf wheel).
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/h1_gpu.txt
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
timeout 150 python -m pytest -q -x -p no:cacheprovider tests/test_mma_gemv.py tests/test_kernels.py \
  -k "fold or one_split or greedy or dependent or fast_model or dispatch" --tb=short 2>&1 | tail -25 | tee $OUT/h1_tests.txt
wait
for f in 0 1 0 1; do
  IMPDIFF_FOLD_NORMS=$f impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128|rror" | sed "s/^/folds=$f /" | tee -a $OUT/h1_bench.txt
done
for f in 0 1; do
  IMPDIFF_FOLD_NORMS=$f timeout 90 python reports/gpu-h100-fast-path/scripts/stop18/greedy.py /tmp/l8q4.gguf $OUT/h1_greedy_$f.json 2>&1 | tail -1
done
cmp $OUT/h1_greedy_0.json $OUT/h1_greedy_1.json && echo "greedy: 48 tokens identical" | tee $OUT/h1_greedy.txt
timeout 120 python benchmarks/profile_decode.py /tmp/l8q4.gguf --graph 2>&1 | grep -v Warn | head -30 | tee $OUT/h1_profile.txt
