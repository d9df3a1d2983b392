# Stop 22 h1: the GPU tests of the i8 kernel on Q6_K (and every i8 / Triton GEMV test, the
# synthetic models' fast-path tests on the new Q6_K planes), then the sweep of the Q6_K decode
# shapes of the 8B model on the i8 kernel against the Triton GEMV: the table it writes is
# merged into the shipped one (h1_table.mma.json). On another GPU than an H100: its name, and
# the H100's tables.
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/h1_gpu.txt
TABLE=kernels/tuning/NVIDIA_H100_80GB_HBM3.mma.json
if ! grep -q H100 $OUT/h1_gpu.txt; then
  export IMPDIFF_MMA_TABLE=$PWD/$TABLE IMPDIFF_GEMV_TABLE=$PWD/kernels/tuning/NVIDIA_H100_80GB_HBM3.json
fi
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
IMPDIFF_SYNTHETIC_DIR=$PWD/.carry/synth timeout 230 python -m pytest -q -p no:cacheprovider \
  tests/test_mma_gemv.py tests/test_kernels.py \
  -k "test_mma_gemv or bit_exact or gemv_matches or gated_gemv or fast_model or greedy or dependent" \
  --tb=short 2>&1 | tail -25 | tee $OUT/h1_tests.txt
wait
timeout 200 python benchmarks/gemv_sweep.py --kernel mma --operands i8 --types Q6_K \
  --write-table /tmp/q6.mma.json 2>&1 | grep -v Warn | tee $OUT/h1_sweep.txt
python - "$TABLE" /tmp/q6.mma.json $OUT/h1_table.mma.json <<'PY'
import json, sys
table = json.load(open(sys.argv[1]))
table.update(json.load(open(sys.argv[2])))
json.dump(table, open(sys.argv[3], "w"), indent=1)
print(table)
PY
