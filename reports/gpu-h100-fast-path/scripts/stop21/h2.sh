# Stop 21 h2: after h1 (every norm folded: 384 -> 374 t/s), the fused variants held at the plain
# kernel's occupancy (MIN_BLOCKS) and the two kinds of norms folded apart: 8B Q4_K_M tg128 with
# IMPDIFF_FOLD_NORMS = 0 / attn / ffn / 1, rounds interleaved; then the profile of "attn".
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/h2_gpu.txt
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
timeout 100 python -m pytest -q -x -p no:cacheprovider tests/test_mma_gemv.py tests/test_kernels.py \
  -k "fold or one_split" --tb=short 2>&1 | tail -15 | tee $OUT/h2_tests.txt
wait
for round in 1 2; do for f in 0 attn ffn 1; do
  IMPDIFF_FOLD_NORMS=$f impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128|rror" | sed "s/^/folds=$f /" | tee -a $OUT/h2_bench.txt
done; done
IMPDIFF_FOLD_NORMS=attn timeout 100 python benchmarks/profile_decode.py /tmp/l8q4.gguf --graph 2>&1 | grep -v Warn | head -30 | tee $OUT/h2_profile_attn.txt
