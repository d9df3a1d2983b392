# Stop 18 f12: L2 bulk prefetch for the small GEMVs only (<= 16 MB: wo, Q+K, Q+K+V, V), with (B) and without (C) the attention kernel releasing its successor at its start; A = this tree
source benchmarks/device_env.sh
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
for v in B C; do rm -rf /tmp/exp$v; mkdir -p /tmp/exp$v; cp -r engine kernels impdiff /tmp/exp$v/; (cd /tmp/exp$v && rm -f impdiff/engine impdiff/kernels && patch -p1 -s < $OLDPWD/.carry/dev18/p$v.patch && ln -sfn ../engine impdiff/engine && ln -sfn ../kernels impdiff/kernels); done
wait
for v in A B C; do
  if [ $v = A ]; then P=$PYTHONPATH; else P=/tmp/cuda_site:/tmp/exp$v:/tmp/site; fi
  PYTHONPATH=$P python .carry/dev18/greedy.py /tmp/l8q4.gguf $OUT/f12_greedy_$v.json | tail -1
done
cmp $OUT/f12_greedy_A.json $OUT/f12_greedy_B.json && cmp $OUT/f12_greedy_A.json $OUT/f12_greedy_C.json && echo "8B greedy: identical A/B/C" | tee -a $OUT/f12_bench.txt
for i in 1 2; do for v in A B C; do
  if [ $v = A ]; then P=$PYTHONPATH; else P=/tmp/cuda_site:/tmp/exp$v:/tmp/site; fi
  PYTHONPATH=$P impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128|rror" | sed "s/^/$v /" | tee -a $OUT/f12_bench.txt
done; done
