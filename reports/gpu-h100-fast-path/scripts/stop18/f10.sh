# Stop 18 f10: deferred norms v2 (inputs loaded before the loop) against 6d24657: GPU tests, critical-path profiles, greedy, tg128 two rounds
source benchmarks/device_env.sh
mkdir -p /tmp/base && tar -xf .carry/base18.tar -C /tmp/base && (cd /tmp/base && ln -sfn ../engine impdiff/engine && ln -sfn ../kernels impdiff/kernels)
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
python -m pytest -q -p no:cacheprovider tests/test_mma_gemv.py tests/test_kernels.py -k "not compiles_for_sm90" --tb=line 2>&1 | tail -6 | tee $OUT/f10_tests.txt
wait
for tree in base new; do
  if [ $tree = base ]; then P=/tmp/cuda_site:/tmp/base:/tmp/site; else P=$PYTHONPATH; fi
  echo "== $tree" | tee -a $OUT/f10_chain.txt
  PYTHONPATH=$P python .carry/dev18/chain_profile.py /tmp/l8q4.gguf 2>&1 | grep -v -i warn | tee -a $OUT/f10_chain.txt
  PYTHONPATH=$P python .carry/dev18/greedy.py /tmp/l8q4.gguf $OUT/f10_greedy_$tree.json | tail -1
done
cmp $OUT/f10_greedy_base.json $OUT/f10_greedy_new.json && echo "8B greedy: identical" | tee -a $OUT/f10_bench.txt
for i in 1 2; do for tree in base new; do
  if [ $tree = base ]; then P=/tmp/cuda_site:/tmp/base:/tmp/site; else P=$PYTHONPATH; fi
  PYTHONPATH=$P impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128|rror" | sed "s/^/$tree /" | tee -a $OUT/f10_bench.txt
done; done
