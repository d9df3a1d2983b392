# Stop 18 f1: kernel tests on the GPU; 8B Q4_K_M decode, deferred norms (this tree) against 6d24657 (base), two rounds
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/f1_gpu.txt
mkdir -p /tmp/base /tmp/parts && tar -xf .carry/base18.tar -C /tmp/base && (cd /tmp/base && ln -sfn ../engine impdiff/engine && ln -sfn ../kernels impdiff/kernels)
for c in sa sb sc sd; do [ -f .carry/$c ] && cp .carry/$c /tmp/parts/; done
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
python -m pytest -q -p no:cacheprovider tests/test_mma_gemv.py tests/test_kernels.py -k "not compiles_for_sm90" --tb=line 2>&1 | tail -8 | tee $OUT/f1_tests.txt
wait
python .carry/dev18/greedy.py /tmp/l8q4.gguf $OUT/f1_greedy_new.json 2>&1 | tail -2
PYTHONPATH=/tmp/cuda_site:/tmp/base:/tmp/site python .carry/dev18/greedy.py /tmp/l8q4.gguf $OUT/f1_greedy_base.json 2>&1 | tail -2
cmp $OUT/f1_greedy_new.json $OUT/f1_greedy_base.json && echo "8B greedy: identical" | tee -a $OUT/f1_bench.txt
for i in 1 2; do for tree in base new; do
  if [ $tree = base ]; then P=/tmp/cuda_site:/tmp/base:/tmp/site; else P=$PYTHONPATH; fi
  PYTHONPATH=$P impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128|rror" | sed "s/^/$tree /" | tee -a $OUT/f1_bench.txt
done; done
