# Stop 18 f13: the tensor-core GEMV's weight loads with a 256-byte L2 prefetch size (ld ... .L2::256B), A = this tree, D = with it
source benchmarks/device_env.sh
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
rm -rf /tmp/expD; mkdir -p /tmp/expD; cp -r engine kernels impdiff /tmp/expD/; (cd /tmp/expD && rm -f impdiff/engine impdiff/kernels && patch -p1 -s < $OLDPWD/.carry/dev18/pD.patch && ln -sfn ../engine impdiff/engine && ln -sfn ../kernels impdiff/kernels)
for v in A D; do
  if [ $v = A ]; then P=$PYTHONPATH; else P=/tmp/cuda_site:/tmp/expD:/tmp/site; fi
  PYTHONPATH=$P python .carry/dev18/gated_gbs.py 2>&1 | grep -v Warn | sed "s/^/$v /" | tee -a $OUT/f13_gbs.txt
done
wait
for v in A D; do
  if [ $v = A ]; then P=$PYTHONPATH; else P=/tmp/cuda_site:/tmp/expD:/tmp/site; fi
  PYTHONPATH=$P python .carry/dev18/greedy.py /tmp/l8q4.gguf $OUT/f13_greedy_$v.json | tail -1
done
cmp $OUT/f13_greedy_A.json $OUT/f13_greedy_D.json && echo "8B greedy: identical" | tee -a $OUT/f13_bench.txt
for i in 1 2; do for v in A D; do
  if [ $v = A ]; then P=$PYTHONPATH; else P=/tmp/cuda_site:/tmp/expD:/tmp/site; fi
  PYTHONPATH=$P impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128|rror" | sed "s/^/$v /" | tee -a $OUT/f13_bench.txt
done; done
