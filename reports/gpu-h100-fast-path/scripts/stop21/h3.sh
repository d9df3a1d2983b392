# Stop 21 h3: the i8 GEMV staging x through one cp.async copy (ASYNC_STAGE, new) against the
# per-super-block loads (ASYNC_STAGE=0: stop 20's staging), with the norms folded or not
# (IMPDIFF_FOLD_NORMS = 0 / attn / 1); 8B Q4_K_M tg128, rounds interleaved, one machine. First
# the GPU tests of every i8 path (synthetic models made beforehand: .carry/synth), last the
# greedy tokens per mode and the profile. On an H200 the H100's tables and 4800 GB/s.
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/h3_gpu.txt
if ! grep -q H100 $OUT/h3_gpu.txt; then  # another GPU: the H100's tables, its own bandwidth
  export IMPDIFF_MMA_TABLE=$PWD/kernels/tuning/NVIDIA_H100_80GB_HBM3.mma.json
  export IMPDIFF_GEMV_TABLE=$PWD/kernels/tuning/NVIDIA_H100_80GB_HBM3.json BW=4800
fi
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
IMPDIFF_SYNTHETIC_DIR=$PWD/.carry/synth timeout 200 python -m pytest -q -p no:cacheprovider \
  tests/test_mma_gemv.py tests/test_kernels.py -k "i8 or fold or one_split or dispatch or greedy or dependent or fast_model" \
  --tb=short 2>&1 | tail -15 | tee $OUT/h3_tests.txt
wait
S=reports/gpu-h100-fast-path/scripts/stop21
for round in 1 2; do for v in "0 1" "attn 1" "1 1" "0 0"; do set -- $v
  IMPDIFF_FOLD_NORMS=$1 I8_DEFINES=ASYNC_STAGE=$2 python $S/defines.py bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth ${BW:-3350} 2>&1 | grep -E "tg128|rror" | sed "s/^/folds=$1 async=$2 /" | tee -a $OUT/h3_bench.txt
done; done
for f in 0 attn 1; do
  IMPDIFF_FOLD_NORMS=$f timeout 60 python $S/../stop18/greedy.py /tmp/l8q4.gguf $OUT/h3_greedy_$f.json > /dev/null 2>&1
done
cmp $OUT/h3_greedy_0.json $OUT/h3_greedy_attn.json && cmp $OUT/h3_greedy_0.json $OUT/h3_greedy_1.json && echo "greedy: 48 tokens identical in the three modes" | tee $OUT/h3_greedy.txt
IMPDIFF_FOLD_NORMS=0 timeout 100 python benchmarks/profile_decode.py /tmp/l8q4.gguf --graph 2>&1 | grep -v Warn | head -16 | tee $OUT/h3_profile.txt
