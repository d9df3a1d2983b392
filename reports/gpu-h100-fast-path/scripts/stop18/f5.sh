# Stop 18 f5: L2 bulk prefetch of each GEMV program's weights: tests, per-shape GB/s, 8B graph profile and tg128 on/off, greedy identity
source benchmarks/device_env.sh
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
python -m pytest -q -p no:cacheprovider tests/test_mma_gemv.py tests/test_kernels.py -k "not compiles_for_sm90" --tb=line 2>&1 | tail -5 | tee $OUT/f5_tests.txt
python .carry/dev18/shapes_prefetch.py 2>&1 | grep -v Warn | tee $OUT/f5_shapes.txt
wait
for pf in 0 1; do IMPDIFF_L2_PREFETCH=$pf python .carry/dev18/greedy.py /tmp/l8q4.gguf $OUT/f5_greedy_$pf.json | tail -1; done
cmp $OUT/f5_greedy_0.json $OUT/f5_greedy_1.json && echo "8B greedy: identical with prefetch on and off" | tee -a $OUT/f5_bench.txt
for pf in 0 1; do echo "== prefetch $pf" | tee -a $OUT/f5_profile.txt; IMPDIFF_L2_PREFETCH=$pf python .carry/dev18/profile_graph.py /tmp/l8q4.gguf 2>&1 | grep -E "replay|kernels a step" | tee -a $OUT/f5_profile.txt; done
for i in 1 2; do for pf in 0 1; do
  IMPDIFF_L2_PREFETCH=$pf impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128|rror" | sed "s/^/prefetch=$pf /" | tee -a $OUT/f5_bench.txt
done; done
