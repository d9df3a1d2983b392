# Stop 21 h3: one machine, rounds interleaved — 8B Q4_K_M tg128 with IMPDIFF_FOLD_NORMS = 0 /
# attn / 1, each with the i8 kernels as built now (bare __launch_bounds__) and as h2 built them
# (bounds.py: a minimum of 1 block, more registers); the fold tests on the GPU (synthetic models
# made beforehand, carried in .carry/synth: no llama.cpp quantiser here); greedy tokens per mode.
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/h3_gpu.txt
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
IMPDIFF_SYNTH_DIR=$PWD/.carry/synth timeout 150 python -m pytest -q -p no:cacheprovider \
  tests/test_mma_gemv.py tests/test_kernels.py \
  -k "fold or one_split or dispatch or gated or greedy or dependent or fast_model or taps" --tb=short 2>&1 | tail -15 | tee $OUT/h3_tests.txt
wait
S=reports/gpu-h100-fast-path/scripts/stop21
for round in 1 2; do for f in 0 attn 1; do for b in bare min1; do
  if [ $b = bare ]; then run="impdiff"; else run="python $S/bounds.py"; fi
  IMPDIFF_FOLD_NORMS=$f $run bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128|rror" | sed "s/^/folds=$f bounds=$b /" | tee -a $OUT/h3_bench.txt
done; done; done
for f in 0 attn 1; do
  IMPDIFF_FOLD_NORMS=$f timeout 60 python reports/gpu-h100-fast-path/scripts/stop18/greedy.py /tmp/l8q4.gguf $OUT/h3_greedy_$f.json > /dev/null 2>&1
done
cmp $OUT/h3_greedy_0.json $OUT/h3_greedy_attn.json && cmp $OUT/h3_greedy_0.json $OUT/h3_greedy_1.json && echo "greedy: 48 tokens identical in the three modes" | tee $OUT/h3_greedy.txt
