# Stop 18 f7b: 8B greedy and tg128 with the swept table (f7a) against the shipped one, two rounds
source benchmarks/device_env.sh
[ -f /tmp/l8q4.gguf ] || python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null
IMPDIFF_MMA_TABLE=/tmp/f7_mma_table.json python .carry/dev18/greedy.py /tmp/l8q4.gguf $OUT/f7_greedy_new.json | tail -1
python .carry/dev18/greedy.py /tmp/l8q4.gguf $OUT/f7_greedy_old.json | tail -1
cmp $OUT/f7_greedy_new.json $OUT/f7_greedy_old.json && echo "8B greedy: identical" | tee -a $OUT/f7_bench.txt
for i in 1 2; do for t in shipped swept; do
  if [ $t = swept ]; then export IMPDIFF_MMA_TABLE=/tmp/f7_mma_table.json; else unset IMPDIFF_MMA_TABLE; fi
  impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128|rror" | sed "s/^/table=$t /" | tee -a $OUT/f7_bench.txt
done; done
