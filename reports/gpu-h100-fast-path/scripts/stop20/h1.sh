# Stop 20 h1: the integer tensor-core Q4_K GEMV (kernels/cuda/q4k_imma_gemv.cu) — its GPU tests,
# the sweep of its configs (the shipped table's config timed beside them), 8B tg128 with the
# swept table against the shipped one, the 8B greedy tokens of both, then the f16 kernel's
# tests (it moved onto q4k_gemv.cuh), a second bench round and the decode profile
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/h1_gpu.txt
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
T="timeout 150 python -m pytest -q -p no:cacheprovider tests/test_mma_gemv.py --tb=short"
$T -k "i8 or dispatch" 2>&1 | tail -25 | tee $OUT/h1_tests.txt
timeout 200 python benchmarks/gemv_sweep.py --kernel mma --operands i8 --write-table /tmp/h1_table.json 2>&1 | grep -v Warn | tee $OUT/h1_sweep.txt
cp /tmp/h1_table.json $OUT/; cat /tmp/h1_table.json
wait
S=reports/gpu-h100-fast-path/scripts/stop18
bench() {  # $1: shipped | swept
  if [ $1 = swept ]; then export IMPDIFF_MMA_TABLE=/tmp/h1_table.json; else unset IMPDIFF_MMA_TABLE; fi
  impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128|rror" | sed "s/^/table=$1 /" | tee -a $OUT/h1_bench.txt
  unset IMPDIFF_MMA_TABLE
}
bench shipped; bench swept
IMPDIFF_MMA_TABLE=/tmp/h1_table.json python $S/greedy.py /tmp/l8q4.gguf $OUT/h1_greedy_swept.json | tail -1
python $S/greedy.py /tmp/l8q4.gguf $OUT/h1_greedy_shipped.json | tail -1
cmp $OUT/h1_greedy_shipped.json $OUT/h1_greedy_swept.json && echo "8B greedy: identical" | tee -a $OUT/h1_bench.txt
$T -k "not i8" 2>&1 | tail -15 | tee $OUT/h1_tests_f16.txt
bench swept; bench shipped
IMPDIFF_MMA_TABLE=/tmp/h1_table.json timeout 60 python benchmarks/profile_decode.py /tmp/l8q4.gguf --graph 2>&1 | tail -25 | tee $OUT/h1_profile.txt
