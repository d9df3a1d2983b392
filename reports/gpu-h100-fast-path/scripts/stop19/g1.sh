# Stop 19 g1: the bulk-copy ring in the tensor-core GEMV — GPU tests, the mma sweep with ring
# depths 0/2/4, then 8B tg128 with the swept table against the shipped one (two rounds) and the
# 8B greedy tokens of both
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv,noheader
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
timeout 200 python -m pytest -q -p no:cacheprovider tests/test_mma_gemv.py --tb=short 2>&1 | tail -15 | tee $OUT/g1_tests.txt
timeout 240 python benchmarks/gemv_sweep.py --kernel mma --write-table /tmp/g1_table.json 2>&1 | grep -v Warn | tee $OUT/g1_sweep.txt
cp /tmp/g1_table.json $OUT/; cat /tmp/g1_table.json
wait
S=reports/gpu-h100-fast-path/scripts/stop18
IMPDIFF_MMA_TABLE=/tmp/g1_table.json python $S/greedy.py /tmp/l8q4.gguf $OUT/g1_greedy_new.json | tail -1
python $S/greedy.py /tmp/l8q4.gguf $OUT/g1_greedy_old.json | tail -1
cmp $OUT/g1_greedy_new.json $OUT/g1_greedy_old.json && echo "8B greedy: identical" | tee -a $OUT/g1_bench.txt
for i in 1 2; do for t in shipped swept; do
  if [ $t = swept ]; then export IMPDIFF_MMA_TABLE=/tmp/g1_table.json; else unset IMPDIFF_MMA_TABLE; fi
  impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128|rror" | sed "s/^/table=$t /" | tee -a $OUT/g1_bench.txt
done; done
