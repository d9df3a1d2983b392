# Stop 18 f11: the Triton GEMV's first weight words before the PDL wait, against the tree before it (base18b): GPU tests, critical path, greedy, tg128 two rounds
source benchmarks/device_env.sh
mkdir -p /tmp/base && rm -rf /tmp/base/* && tar -xf .carry/base18b.tar -C /tmp/base && (cd /tmp/base && ln -sfn ../engine impdiff/engine && ln -sfn ../kernels impdiff/kernels)
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
python -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_mma_gemv.py -k "not compiles_for_sm90" --tb=line 2>&1 | tail -6 | tee $OUT/f11_tests.txt
wait
for tree in base new; do
  if [ $tree = base ]; then P=/tmp/cuda_site:/tmp/base:/tmp/site; else P=$PYTHONPATH; fi
  echo "== $tree" | tee -a $OUT/f11_chain.txt
  PYTHONPATH=$P python .carry/dev18/chain_profile.py /tmp/l8q4.gguf 2>&1 | grep -v -i warn | tee -a $OUT/f11_chain.txt
  PYTHONPATH=$P python .carry/dev18/greedy.py /tmp/l8q4.gguf $OUT/f11_greedy_$tree.json | tail -1
done
cmp $OUT/f11_greedy_base.json $OUT/f11_greedy_new.json && echo "8B greedy: identical" | tee -a $OUT/f11_bench.txt
for i in 1 2; do for tree in base new; do
  if [ $tree = base ]; then P=/tmp/cuda_site:/tmp/base:/tmp/site; else P=$PYTHONPATH; fi
  PYTHONPATH=$P impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128|rror" | sed "s/^/$tree /" | tee -a $OUT/f11_bench.txt
done; done
