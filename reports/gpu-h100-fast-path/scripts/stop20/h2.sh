# Stop 20 h2: h1 cut to what ~5 minutes of device time holds, most telling first — the i8
# kernel's GPU tests, its sweep against the shipped config and Triton per Q4_K shape, then 8B
# tg128 with the swept table against the shipped one
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/h2_gpu.txt
timeout 100 python -m pytest -q -x -p no:cacheprovider tests/test_mma_gemv.py -k i8 --tb=short 2>&1 | tail -20 | tee $OUT/h2_tests.txt
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
timeout 170 python benchmarks/gemv_sweep.py --kernel mma --operands i8 --write-table /tmp/h2_table.json 2>&1 | grep -v Warn | tee $OUT/h2_sweep.txt
cp /tmp/h2_table.json $OUT/
wait
for t in shipped swept shipped swept; do
  if [ $t = swept ]; then export IMPDIFF_MMA_TABLE=/tmp/h2_table.json; else unset IMPDIFF_MMA_TABLE; fi
  impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128|rror" | sed "s/^/table=$t /" | tee -a $OUT/h2_bench.txt
done
