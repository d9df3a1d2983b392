# Stop 23 h2 (prepared, not run): after h1 on the same warm machine (/tmp/l8q4.gguf, /tmp/s22
# kept). h1's tg128 round again (the fusions none, branches, rope, all); greedy tokens with the
# fusions off and all on, and the top two logits where they part; where the step's time goes
# with them on (expect no RoPE kernel, and V off the path) and off; the GPU tests with no
# tuning table (Q6_K and the gated product on the i8 kernel, the rest on Triton: RoPE stays a
# kernel where a QKV product is not on the i8 kernel); the NormAfter patch's own tests.
source benchmarks/device_env.sh
export IMPDIFF_SYNTHETIC_DIR=$PWD/.carry/synth
export IMPDIFF_MMA_TABLE=$PWD/kernels/tuning/NVIDIA_H100_80GB_HBM3.mma.json IMPDIFF_GEMV_TABLE=$PWD/kernels/tuning/NVIDIA_H100_80GB_HBM3.json
[ -f /tmp/l8q4.gguf ] || python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H100 || BW=4800
BENCH="bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth ${BW:-3350}"
for f in "" branches rope all; do
  IMPDIFF_FUSIONS=$f impdiff $BENCH 2>&1 | grep -E "tg128|rror" | sed "s/^/fusions ${f:-none} /" | tee -a $OUT/h2_bench.txt
done
ON="env IMPDIFF_FUSIONS=all"
G=reports/gpu-h100-fast-path/scripts/stop18/greedy.py
M=reports/gpu-h100-fast-path/scripts/stop22/margin.py
timeout 60 python $G /tmp/l8q4.gguf $OUT/h2_greedy_off.json > /dev/null 2>&1
$ON timeout 60 python $G /tmp/l8q4.gguf $OUT/h2_greedy_on.json > /dev/null 2>&1
STEP=$(python -c "import json,sys; a,b=(json.load(open(f)) for f in sys.argv[1:]); print(next((i for i,(x,y) in enumerate(zip(a,b)) if x!=y), -1))" $OUT/h2_greedy_off.json $OUT/h2_greedy_on.json)
echo "greedy on vs off: first differing step $STEP (-1: identical)" | tee $OUT/h2_greedy.txt
if [ "$STEP" != "-1" ]; then
  timeout 40 python $M /tmp/l8q4.gguf $OUT/h2_greedy_off.json $STEP 2>&1 | tail -1 | sed "s/^/off: /" | tee -a $OUT/h2_greedy.txt
  $ON timeout 40 python $M /tmp/l8q4.gguf $OUT/h2_greedy_off.json $STEP 2>&1 | tail -1 | sed "s/^/on: /" | tee -a $OUT/h2_greedy.txt
fi
$ON timeout 100 python benchmarks/profile_decode.py /tmp/l8q4.gguf --graph 2>&1 | grep -v Warn | head -18 | tee $OUT/h2_profile_on.txt
timeout 100 python benchmarks/profile_decode.py /tmp/l8q4.gguf --graph 2>&1 | grep -v Warn | head -18 | tee $OUT/h2_profile_off.txt
echo '{}' > /tmp/empty.json
$ON IMPDIFF_MMA_TABLE=/tmp/empty.json timeout 80 python -m pytest -q -p no:cacheprovider tests/test_kernels.py \
  -k "fast_model or greedy or dependent or parallel" --tb=short 2>&1 | tail -4 | sed "s/^/no table, on: /" | tee $OUT/h2_tests.txt
[ -d /tmp/s22 ] && (cd /tmp/s22 && source benchmarks/device_env.sh && IMPDIFF_MMA_TABLE=/tmp/s22/kernels/tuning/NVIDIA_H100_80GB_HBM3.mma.json timeout 90 python -m pytest -q -p no:cacheprovider tests/test_mma_gemv.py -k "norm_in_the_last_block" --tb=short) 2>&1 | tail -3 | sed "s/^/NormAfter: /" | tee -a $OUT/h2_tests.txt
