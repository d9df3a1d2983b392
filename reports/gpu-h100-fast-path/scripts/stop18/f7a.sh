# Stop 18 f7a: K shared by a block's warps in the tensor-core GEMV: GPU tests, then the mma sweep (its table to /tmp and $OUT)
source benchmarks/device_env.sh
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
python -m pytest -q -p no:cacheprovider tests/test_mma_gemv.py --tb=short 2>&1 | tail -6 | tee $OUT/f7_tests.txt
python benchmarks/gemv_sweep.py --kernel mma --write-table /tmp/f7_mma_table.json 2>&1 | grep -v Warn | tee $OUT/f7_sweep.txt
cp /tmp/f7_mma_table.json $OUT/
wait
