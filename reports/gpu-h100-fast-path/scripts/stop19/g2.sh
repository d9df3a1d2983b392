# Stop 19 g2: the ring's tests with configs that fit; the feed probe (ring_probe.py): each
# weight feed with and without the arithmetic
source benchmarks/device_env.sh
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_mma_gemv.py --tb=line 2>&1 | tail -4 | tee $OUT/g2_tests.txt
patch kernels/cuda/q4k_mma_gemv.cu < reports/gpu-h100-fast-path/scripts/stop19/nomath_probe.patch
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
python reports/gpu-h100-fast-path/scripts/stop19/ring_probe.py /tmp/g2_table.json 2>&1 | grep -v Warn | tee $OUT/g2_probe.txt
# 8B tg128: the last commit before the ring (9f4fd9c), this tree, this tree with the probe's gated pick
patch -R kernels/cuda/q4k_mma_gemv.cu < reports/gpu-h100-fast-path/scripts/stop19/nomath_probe.patch
wait; cp /tmp/g2_table.json $OUT/
mkdir -p /tmp/base && tar -xf .carry/base19.tar -C /tmp/base && ln -sfn ../engine /tmp/base/impdiff/engine && ln -sfn ../kernels /tmp/base/impdiff/kernels
for i in 1 2; do for t in base new picked; do
  if [ $t = base ]; then P=/tmp/base:/tmp/site; else P=$PWD:/tmp/site; fi
  if [ $t = picked ]; then export IMPDIFF_MMA_TABLE=/tmp/g2_table.json; else unset IMPDIFF_MMA_TABLE; fi
  PYTHONPATH=$P impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128|rror" | sed "s/^/tree=$t /" | tee -a $OUT/g2_bench.txt
done; done
