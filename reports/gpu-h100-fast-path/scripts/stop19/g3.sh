# Stop 19 g3: the ring with each job's next super-block read from shared memory into registers
# during this one (ring_smem_prefetch.patch): GPU tests of the ring, the probe with arithmetic,
# and 8B tg128 with the probe's gated pick against the shipped table
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader
patch -s -p1 < reports/gpu-h100-fast-path/scripts/stop19/bulk_copy_ring.patch
patch kernels/cuda/q4k_mma_gemv.cu < reports/gpu-h100-fast-path/scripts/stop19/ring_smem_prefetch.patch
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
timeout 100 python -m pytest -q -p no:cacheprovider tests/test_mma_gemv.py -k "bulk or gated" --tb=line 2>&1 | tail -3 | tee $OUT/g3_tests.txt
patch kernels/cuda/q4k_mma_gemv.cu < reports/gpu-h100-fast-path/scripts/stop19/nomath_probe.patch
python reports/gpu-h100-fast-path/scripts/stop19/ring_probe.py /tmp/g3_table.json 0 2>&1 | grep -v Warn | tee $OUT/g3_probe.txt
patch -R kernels/cuda/q4k_mma_gemv.cu < reports/gpu-h100-fast-path/scripts/stop19/nomath_probe.patch
wait; cp /tmp/g3_table.json $OUT/
for i in 1 2; do for t in shipped picked; do
  if [ $t = picked ]; then export IMPDIFF_MMA_TABLE=/tmp/g3_table.json; else unset IMPDIFF_MMA_TABLE; fi
  impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128|rror" | sed "s/^/table=$t /" | tee -a $OUT/g3_bench.txt
done; done
