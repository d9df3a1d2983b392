# Stop 22 h2: 8B Q4_K_M tg128, rounds interleaved on one machine: stop 21's tree (c3b4165,
# Q6_K as bytes; carried as .carry/base.tar), this stop's tree with the Q6_K products on the
# Triton GEMV (the shipped table without h1's Q6_K entries: IMPDIFF_MMA_TABLE=q4 only), and on
# the i8 kernel (the table with them); then greedy tokens of each and the profile.
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/h2_gpu.txt
grep -q H100 $OUT/h2_gpu.txt || export IMPDIFF_GEMV_TABLE=$PWD/kernels/tuning/NVIDIA_H100_80GB_HBM3.json BW=4800
[ -f /tmp/l8q4.gguf ] || python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null
mkdir -p /tmp/base && tar -x -C /tmp/base -f .carry/base.tar
NEW=$PWD/kernels/tuning/NVIDIA_H100_80GB_HBM3.mma.json
python -c "import json; t=json.load(open('$NEW')); json.dump({k: v for k, v in t.items() if not k.startswith('q6_k')}, open('/tmp/q4only.mma.json', 'w'))"
BENCH="bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth ${BW:-3350}"
base() { (cd /tmp/base && source benchmarks/device_env.sh && IMPDIFF_MMA_TABLE=/tmp/base/kernels/tuning/NVIDIA_H100_80GB_HBM3.mma.json IMPDIFF_GEMV_TABLE=/tmp/base/kernels/tuning/NVIDIA_H100_80GB_HBM3.json "$@"); }
for round in 1 2; do
  base impdiff $BENCH 2>&1 | grep -E "tg128|rror" | sed "s/^/stop21 q6k-bytes /" | tee -a $OUT/h2_bench.txt
  IMPDIFF_MMA_TABLE=/tmp/q4only.mma.json impdiff $BENCH 2>&1 | grep -E "tg128|rror" | sed "s/^/q6k-planes triton /" | tee -a $OUT/h2_bench.txt
  IMPDIFF_MMA_TABLE=$NEW impdiff $BENCH 2>&1 | grep -E "tg128|rror" | sed "s/^/q6k-planes i8 /" | tee -a $OUT/h2_bench.txt
done
G=reports/gpu-h100-fast-path/scripts/stop18/greedy.py
base timeout 60 python $G /tmp/l8q4.gguf $OUT/h2_greedy_base.json > /dev/null 2>&1
IMPDIFF_MMA_TABLE=/tmp/q4only.mma.json timeout 60 python $G /tmp/l8q4.gguf $OUT/h2_greedy_triton.json > /dev/null 2>&1
IMPDIFF_MMA_TABLE=$NEW timeout 60 python $G /tmp/l8q4.gguf $OUT/h2_greedy_i8.json > /dev/null 2>&1
for v in triton i8; do cmp -s $OUT/h2_greedy_base.json $OUT/h2_greedy_$v.json && echo "greedy $v: identical to stop 21's" || echo "greedy $v: DIFFERS from stop 21's"; done | tee $OUT/h2_greedy.txt
IMPDIFF_MMA_TABLE=$NEW timeout 100 python benchmarks/profile_decode.py /tmp/l8q4.gguf --graph 2>&1 | grep -v Warn | head -18 | tee $OUT/h2_profile.txt
