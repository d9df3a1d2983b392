source benchmarks/device_env.sh
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
python -m pytest -q -p no:cacheprovider tests/test_mma_gemv.py 2>&1 | tail -2
python benchmarks/gemv_sweep.py --kernel mma --write-table $OUT/NVIDIA_H100_80GB_HBM3.mma.json 2>&1 | tee $OUT/e9_sweep.txt
wait
for mode in triton mma triton mma; do
  IMPDIFF_GEMV=$mode IMPDIFF_MMA_TABLE=$OUT/NVIDIA_H100_80GB_HBM3.mma.json impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128" | sed "s/^/$mode /" | tee -a $OUT/e9_bench.txt
done
